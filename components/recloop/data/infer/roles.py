"""Choosing which column plays a role (user id, event time, ...) from column names and values.

Every role is filled the same way. Each column that could play it becomes a `Candidate` with a tier:
3 its name is the role's usual name (`user_id`, `timestamp`), 2 its name contains a word of the role
(`customer`, `created_at`), 1 only its values fit (ISO dates in a column named `x`). The highest tier wins;
two candidates in that tier are a `Question` naming the flag that settles it, never a silent pick. A flag
given on the command line always wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recloop.data.infer.facts import ColumnFacts

NONE = "none"  # the flag value meaning "the data has no such column"
ID_WORDS = frozenset({"id", "key", "code", "no", "num", "number", "ref", "uuid", "guid"})


@dataclass(frozen=True)
class ColumnGuess:
    """The column that fills one config key (None: the data has none), and why."""

    key: str  # config key, e.g. "data.interactions.columns.user"
    column: str | None
    reason: str
    flag: str  # the command-line flag that sets it


@dataclass(frozen=True)
class Question:
    """Something the data cannot settle: shown to the user with the flag (and values) that answer it."""

    text: str
    flag: str
    options: tuple[str, ...] = ()

    def message(self) -> str:
        if not self.options:
            return f"{self.text} Name it with {self.flag} COLUMN."
        answers = " or ".join(f"{self.flag} {option}" for option in self.options)
        return f"{self.text} Settle it with {answers}."


@dataclass(frozen=True)
class Candidate:
    column: str
    tier: int  # 3 usual name, 2 name contains a role word, 1 values only
    reason: str


@dataclass(frozen=True)
class Role:
    """A config key to fill: its flag, how to name it in questions, and whether it must be found."""

    key: str
    flag: str
    what: str  # "the user id", used in "Which column holds the user id?"
    required: bool


def name_tokens(name: str) -> tuple[str, ...]:
    """'userId' -> ('user', 'id'); 'event_time' -> ('event', 'time'); 'SKU' -> ('sku',)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return tuple(t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t)


def name_tier(name: str, usual: Iterable[tuple[str, ...]], words: frozenset[str], others: frozenset[str]) -> int:
    """3 if the name is one of the `usual` token tuples; 2 if it holds one of `words` and otherwise only
    `others` (e.g. id words); 0 otherwise."""
    tokens = name_tokens(name)
    if tokens in set(usual):
        return 3
    if tokens and any(t in words for t in tokens) and all(t in words or t in others for t in tokens):
        return 2
    return 0


def choose(role: Role, candidates: Sequence[Candidate], columns: Sequence[ColumnFacts]) -> ColumnGuess | Question:
    """The best candidate, or a question when none or several tie at the best tier."""
    if not candidates:
        if role.required:
            found = ", ".join(repr(c.name) for c in columns)
            return Question(f"No column looks like {role.what} (columns: {found}).", role.flag)
        return ColumnGuess(role.key, None, f"no column looks like {role.what}", role.flag)
    top = max(c.tier for c in candidates)
    best = [c for c in candidates if c.tier == top]
    if len(best) == 1:
        return ColumnGuess(role.key, best[0].column, best[0].reason, role.flag)
    listed = "; ".join(f"{c.column!r} ({c.reason})" for c in best)
    return Question(f"Which column holds {role.what}? These could: {listed}.", role.flag, tuple(c.column for c in best))


def from_flag(role: Role, value: str | None, columns: Sequence[ColumnFacts]) -> ColumnGuess | Question | None:
    """The guess a command-line flag forces; None when the flag was not given."""
    if value is None:
        return None
    if value == NONE and not role.required:
        return ColumnGuess(role.key, None, f"none (set by {role.flag} {NONE})", role.flag)
    facts = next((c for c in columns if c.name == value), None)
    if facts is None:
        found = ", ".join(repr(c.name) for c in columns)
        return Question(f"{role.flag} {value}: there is no column {value!r} (columns: {found}).", role.flag)
    return ColumnGuess(role.key, value, f"set by {role.flag}; {facts.describe()}", role.flag)
