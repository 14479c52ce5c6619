"""Which interaction columns hold the user, item, time, rating, weight and event type, and the time's unit.

Roles are filled in that order and a column fills at most one. The time's unit comes from its values:
ISO-8601 text (or a typed Parquet time) is `iso`; epoch numbers are seconds, milliseconds, microseconds or
nanoseconds by magnitude (`EPOCH_UNITS`: seconds from 1e8, i.e. 1973, up to 1e11, and so on by 1000s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recloop.data.infer.facts import ColumnFacts, epoch_date_text
from recloop.data.infer.roles import ID_WORDS, Candidate, ColumnGuess, Question, Role, choose, from_flag, name_tier

_KEY = "data.interactions.columns"
USER = Role(f"{_KEY}.user", "--user-col", "the user id", True)
ITEM = Role(f"{_KEY}.item", "--item-col", "the item id", True)
TIME = Role(f"{_KEY}.timestamp", "--time-col", "the event time", True)
RATING = Role(f"{_KEY}.rating", "--rating-col", "a rating", False)
WEIGHT = Role(f"{_KEY}.weight", "--weight-col", "an event weight", False)
EVENT = Role(f"{_KEY}.event_type", "--event-col", "the event type", False)
TIME_UNIT_FLAG = "--time-unit"
TIME_UNITS = ("s", "ms", "us", "ns", "iso")

USER_WORDS = frozenset(
    {"user", "customer", "client", "member", "visitor", "account", "buyer", "shopper", "subscriber", "viewer"}
    | {"listener", "reader", "player", "person", "uid", "learner", "student", "patient"}
)
ITEM_WORDS = frozenset(
    {"item", "product", "sku", "movie", "film", "song", "track", "article", "book", "video", "asset", "content"}
    | {"offer", "listing", "iid", "asin", "game", "show", "post", "recipe", "course", "album", "artist", "episode"}
)
_TIME_USUAL = {("timestamp",), ("ts",), ("time",), ("datetime",), ("date",), ("event", "time")}
_TIME_USUAL |= {("event", "timestamp"), ("event", "date"), ("event", "ts")}
_TIME_WORDS = frozenset({"time", "timestamp", "ts", "date", "datetime", "at", "epoch", "when", "day"})
_TIME_WORDS |= frozenset({"created", "updated", "occurred", "modified", "happened", "logged", "seen"})
_TIME_OTHERS = frozenset({"event", "unix", "utc", "ms", "sec", "seconds", "millis", "first", "last"})
_RATING_WORDS = frozenset({"rating", "rate", "score", "stars", "star", "grade"})
_WEIGHT_WORDS = frozenset({"weight", "count", "quantity", "qty", "plays", "playcount", "views", "clicks", "amount"})
_WEIGHT_WORDS |= frozenset({"times", "duration", "dwell", "watch", "value"})
_EVENT_WORDS = frozenset({"event", "action", "type", "behavior", "behaviour", "interaction", "kind", "activity"})
# Event types are a short vocabulary (view, cart, purchase); more distinct values are not types.
MAX_EVENT_TYPES = 100
# Ratings live on a small scale (1-5, 1-10, 0-100); larger spans are counts or prices.
MAX_RATING_SPAN = 100
# (unit, lowest, highest magnitude, words): seconds from 1e8 (1973) up to 1e11 (year 5138), then by 1000s.
EPOCH_UNITS: tuple[tuple[str, float, float, str], ...] = (
    ("s", 1e8, 1e11, "Unix seconds"),
    ("ms", 1e11, 1e14, "Unix milliseconds"),
    ("us", 1e14, 1e17, "Unix microseconds"),
    ("ns", 1e17, 1e20, "Unix nanoseconds"),
)
_SECONDS_PER = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


@dataclass(frozen=True)
class TimeUnitGuess:
    unit: str  # s | ms | us | ns | iso
    reason: str
    check: str | None = None  # something the user should look at


@dataclass(frozen=True)
class InteractionHints:
    """Columns (and the time unit) given on the command line; None = infer."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    time_unit: str | None = None
    rating: str | None = None
    weight: str | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class InteractionGuess:
    user: ColumnGuess
    item: ColumnGuess
    timestamp: ColumnGuess
    time_unit: TimeUnitGuess
    rating: ColumnGuess
    weight: ColumnGuess
    event_type: ColumnGuess

    @property
    def columns(self) -> tuple[ColumnGuess, ...]:
        return (self.user, self.item, self.timestamp, self.rating, self.weight, self.event_type)


def infer_interactions(columns: Sequence[ColumnFacts], hints: InteractionHints) -> InteractionGuess | list[Question]:
    """The column mapping and time unit, or every question that must be answered first."""
    claimed: set[str] = {
        v for v in (hints.user, hints.item, hints.time, hints.rating, hints.weight, hints.event_type) if v
    }
    questions: list[Question] = []
    found: dict[str, ColumnGuess] = {}
    for role, hint, candidates in (
        (USER, hints.user, _id_candidates(columns, USER_WORDS, "user", "a user id")),
        (ITEM, hints.item, _id_candidates(columns, ITEM_WORDS, "item", "an item id")),
        (TIME, hints.time, _time_candidates(columns)),
        (RATING, hints.rating, _rating_candidates(columns)),
        (WEIGHT, hints.weight, _weight_candidates(columns)),
        (EVENT, hints.event_type, _event_candidates(columns)),
    ):
        forced = from_flag(role, hint, columns)
        result = forced or choose(role, [c for c in candidates if c.column not in claimed], columns)
        if role is TIME and isinstance(result, Question) and not result.options:
            result = _explain_unparsed_times(result, columns)
        if isinstance(result, Question):
            questions.append(result)
            continue
        found[role.key] = result
        if result.column is not None and forced is None:
            claimed.add(result.column)
    time_guess = found.get(TIME.key)
    unit: TimeUnitGuess | Question | None = None
    if time_guess is not None and time_guess.column is not None:
        unit = infer_time_unit(next(c for c in columns if c.name == time_guess.column), hints.time_unit)
        if isinstance(unit, Question):
            questions.append(unit)
    if questions or not isinstance(unit, TimeUnitGuess):
        return questions
    return InteractionGuess(
        found[USER.key], found[ITEM.key], found[TIME.key], unit, found[RATING.key], found[WEIGHT.key], found[EVENT.key]
    )


def _id_candidates(columns: Sequence[ColumnFacts], words: frozenset[str], word: str, what: str) -> list[Candidate]:
    out = []
    for facts in columns:
        if facts.kind not in ("integer", "text") or facts.list_separator:
            continue
        tier = name_tier(facts.name, {(word,), (word, "id")}, words, ID_WORDS)
        if tier:
            named = f"the usual name for {what}" if tier == 3 else f"named like {what}"
            out.append(Candidate(facts.name, tier, f"{named}; {facts.n_distinct:,} distinct values"))
    return out


def _time_candidates(columns: Sequence[ColumnFacts]) -> list[Candidate]:
    out = []
    for facts in columns:
        tier = name_tier(facts.name, _TIME_USUAL, _TIME_WORDS, _TIME_OTHERS)
        if facts.kind == "datetime":
            tier = max(tier, 1)
        elif facts.kind not in ("integer", "number"):
            continue  # named like a time but holds text that is no date
        if tier:
            named = {3: "the usual name for a time", 2: "named like a time", 1: "the only hint is its values"}[tier]
            out.append(Candidate(facts.name, tier, f"{named}; {facts.describe()}"))
    return out


def _explain_unparsed_times(question: Question, columns: Sequence[ColumnFacts]) -> Question:
    """Add the columns named like a time whose text is neither ISO-8601 nor an epoch number."""
    named = [f for f in columns if f.kind == "text" and name_tier(f.name, _TIME_USUAL, _TIME_WORDS, _TIME_OTHERS)]
    if not named:
        return question
    shown = "; ".join(f"{f.name!r} holds {f.examples[0]!r}" for f in named)
    return Question(
        f"{question.text} Named like one but not read as times: {shown}. Ingest reads ISO-8601 text "
        "(2024-01-31T12:00:00Z) or epoch numbers; convert the column to one of those.",
        question.flag,
    )


def _rating_candidates(columns: Sequence[ColumnFacts]) -> list[Candidate]:
    out = []
    for facts in columns:
        if facts.kind not in ("integer", "number") or facts.low is None or facts.high is None:
            continue
        tier = name_tier(facts.name, {("rating",), ("ratings",), ("stars",)}, _RATING_WORDS, frozenset({"value"}))
        if tier and facts.high - facts.low <= MAX_RATING_SPAN:
            out.append(Candidate(facts.name, tier, f"named like a rating; {facts.describe()}"))
    return out


def _weight_candidates(columns: Sequence[ColumnFacts]) -> list[Candidate]:
    out = []
    for facts in columns:
        if facts.kind not in ("integer", "number") or facts.low is None or facts.low < 0:
            continue
        others = frozenset({"play", "view", "click", "total", "event", "sec", "seconds", "ms"})
        tier = name_tier(facts.name, {("weight",), ("event", "weight")}, _WEIGHT_WORDS, others)
        if tier:
            out.append(Candidate(facts.name, tier, f"named like an event weight; non-negative {facts.describe()}"))
    return out


def _event_candidates(columns: Sequence[ColumnFacts]) -> list[Candidate]:
    out = []
    for facts in columns:
        if facts.kind != "text" or facts.n_distinct > MAX_EVENT_TYPES:
            continue
        tier = name_tier(facts.name, {("event", "type"), ("event",), ("action",)}, _EVENT_WORDS, frozenset({"name"}))
        if tier:
            out.append(Candidate(facts.name, tier, f"named like an event type; {facts.describe()}"))
    return out


def infer_time_unit(facts: ColumnFacts, flag_value: str | None) -> TimeUnitGuess | Question:
    """How the time column is encoded, from its values (or the --time-unit flag)."""
    if flag_value is not None:
        if flag_value not in TIME_UNITS:
            return Question(f"{TIME_UNIT_FLAG} {flag_value}: not a time unit.", TIME_UNIT_FLAG, TIME_UNITS)
        return TimeUnitGuess(flag_value, f"set by {TIME_UNIT_FLAG}")
    if facts.kind == "datetime":
        source = "a typed timestamp column" if facts.typed_time else "ISO-8601 text"
        return TimeUnitGuess("iso", f"column {facts.name!r} holds {facts.describe()} ({source})")
    assert facts.low is not None and facts.high is not None
    low_unit, high_unit = _epoch_unit(facts.low), _epoch_unit(facts.high)
    if low_unit is None and high_unit is None:
        check = (
            f"column {facts.name!r} holds {facts.describe()}: too small for Unix times. They are read as seconds "
            f"after 1970-01-01, which keeps their order; set {TIME_UNIT_FLAG} if they mean something else."
        )
        return TimeUnitGuess("s", f"column {facts.name!r} holds {facts.describe()}: event order only", check)
    if low_unit != high_unit:
        options = tuple(u for u in (low_unit, high_unit) if u is not None)
        return Question(
            f"Column {facts.name!r} holds {facts.describe()}, numbers of different magnitudes: which time unit "
            "are they in?",
            TIME_UNIT_FLAG,
            options if len(options) > 1 else ("s", "ms"),
        )
    assert high_unit is not None
    words = next(w for u, _, _, w in EPOCH_UNITS if u == high_unit)
    first, last = (epoch_date_text(v / _SECONDS_PER[high_unit]) for v in (facts.low, facts.high))
    return TimeUnitGuess(high_unit, f"column {facts.name!r} holds {facts.describe()} → {words} ({first}..{last})")


def _epoch_unit(value: float) -> str | None:
    magnitude = abs(value)
    return next((unit for unit, low, high, _ in EPOCH_UNITS if low <= magnitude < high), None)
