"""API keys, kept only as sha256 digests (user-id pseudonyms: `recloop.eventlog.pseudonym`).

The keys reach this module as a typed value from `recloop serve` (a config secret field or the
RECLOOP_API_KEYS environment variable, read only by the CLI). Raw keys are hashed on arrival and dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from recloop.errors import ConfigError
from recloop.eventlog.pseudonym import GENERATE_SECRET_HINT, MIN_SECRET_CHARS

_HASHED_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted API keys, as sha256 digests only."""

    digests: frozenset[str]

    @classmethod
    def parse(cls, secret: str | None, source: str) -> ApiKeys:
        """Keys from a comma-separated secret: raw keys (>= 16 chars) or `sha256:<64 hex>` digests."""
        if secret is None:
            return cls(frozenset())
        digests: set[str] = set()
        problems: list[str] = []
        for position, entry in enumerate(e.strip() for e in secret.split(",")):
            if not entry:
                continue
            match = _HASHED_RE.match(entry)
            if match:
                digests.add(match.group(1).lower())
            elif entry.startswith("sha256:"):
                problems.append(f"entry {position + 1}: a `sha256:` entry must hold 64 hex digits")
            elif len(entry) < MIN_SECRET_CHARS:
                # Never echo the key itself: the message may end up in logs.
                problems.append(
                    f"entry {position + 1}: API keys must have at least {MIN_SECRET_CHARS} "
                    f"characters (this one has {len(entry)}); generate one with {GENERATE_SECRET_HINT}"
                )
            else:
                digests.add(sha256_hex(entry))
        if problems:
            raise ConfigError(source, problems)
        return cls(frozenset(digests))

    @property
    def configured(self) -> bool:
        return bool(self.digests)

    def check(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys (constant-time per comparison)."""
        if not presented:
            return False
        digest = sha256_hex(presented)
        found = False
        for known in self.digests:  # compare against all, so timing does not tell which one matched
            found |= hmac.compare_digest(digest, known)
        return found


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a client presented: `X-API-Key: KEY` or `Authorization: Bearer KEY`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
