"""Personal data out of text that leaves the process (the prompts `llm_rerank` sends to an endpoint).

Regular expressions, not a library: e-mail addresses, card-like numbers (13-19 digits, spaces or dashes
between groups; a Luhn check would let a mistyped card number through) and phone-like numbers (9 or more digits, optionally with a
leading +, spaces, dashes, dots or parentheses) are replaced by a placeholder, plus any pattern the config
adds. It errs on the side of removing: a long product code that looks like a phone number is removed too.
Presidio or scrubadub recognise names and addresses as well, at the cost of a language model or a large
dependency per prompt; item text rarely holds those, and config patterns cover known fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s().\-]{0,2}\d){8,14}(?!\w)")


@dataclass(frozen=True)
class Scrubber:
    """Replaces personal data in text; `extra` are the config's own patterns (compiled at config load)."""

    extra: Sequence[re.Pattern[str]] = ()

    def __call__(self, text: str) -> str:
        text = EMAIL.sub("[email]", text)
        text = CARD.sub("[card]", text)
        text = PHONE.sub("[phone]", text)
        for pattern in self.extra:
            text = pattern.sub("[redacted]", text)
        return text
