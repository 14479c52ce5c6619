"""The item catalog's id column, category column and text template; the user table's id and attributes.

The id column is the one whose values are unique per row and hold the most of the ids the interactions
use (so `movieId` is found even when the interactions call it `item`). The category is a column named
like one (`genres`, `category`) holding a short vocabulary or '|' lists. The text template joins the
columns that hold words: a title first, then the category, then the rest in file order, each after its
label (`{title}. Genres: {genres}`), which is what text-aware models embed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from recloop.data.infer.facts import ColumnFacts
from recloop.data.infer.roles import (
    ID_WORDS,
    NONE,
    Candidate,
    ColumnGuess,
    Question,
    Role,
    choose,
    from_flag,
    name_tier,
    name_tokens,
)

ITEM_ID = Role("data.items.id", "--item-id-col", "the item id (the ids the interactions use)", True)
CATEGORY = Role("data.items.category", "--category-col", "the item category", False)
USER_ID = Role("data.users.id", "--user-id-col", "the user id (the ids the interactions use)", True)
TEXT_FLAG = "--text-cols"
# recloop splits category lists on '|' (and reads JSON lists); other separators stay whole.
SPLIT_SEPARATORS = ("|", "json")
_CATEGORY_WORDS = frozenset({"category", "categories", "genre", "genres", "tag", "tags", "type", "types"})
_CATEGORY_WORDS |= frozenset({"section", "department", "class", "topic", "topics", "label", "labels", "cat"})
_TITLE_WORDS = frozenset({"title", "name", "headline"})
# An id column must hold at least this share of the interacted ids to be picked without a flag.
MIN_ID_COVERAGE = 0.5
# Text shorter than this on average (codes, flags) says nothing a language model can use.
MIN_TEXT_CHARS = 3
_MAX_CATEGORIES = 1000
# Characters a `{column}` template field cannot hold (str.format reads them as attribute, index or format).
_TEMPLATE_SPECIAL = frozenset(".[]:!{}")


@dataclass(frozen=True)
class IdCoverage:
    """How many of the ids the interactions use a column holds."""

    column: str
    found: int
    total: int

    @property
    def share(self) -> float:
        return self.found / self.total if self.total else 0.0


@dataclass(frozen=True)
class TextGuess:
    columns: tuple[str, ...]  # in template order; empty: no column holds words
    template: str
    reason: str


@dataclass(frozen=True)
class ItemHints:
    """Columns given on the command line; None = infer."""

    id: str | None = None
    category: str | None = None
    text: tuple[str, ...] | None = None  # () = no text columns


@dataclass(frozen=True)
class ItemGuess:
    id: ColumnGuess
    coverage: IdCoverage
    category: ColumnGuess
    text: TextGuess
    notes: tuple[str, ...]  # things to check


@dataclass(frozen=True)
class UserGuess:
    id: ColumnGuess
    coverage: IdCoverage
    attributes: tuple[ColumnFacts, ...]


def coverage_of(column: str, values: Collection[str], used_ids: Collection[str]) -> IdCoverage:
    used = set(used_ids)
    return IdCoverage(column, len(used & set(values)), len(used))


def choose_id(
    role: Role, columns: Sequence[ColumnFacts], coverages: Sequence[IdCoverage], same_name: str, flag: str | None
) -> ColumnGuess | Question:
    """The id column: the flag's, else the best unique column holding the interactions' ids."""
    forced = from_flag(role, flag, columns)
    if forced is not None:
        return forced
    by_name = {c.name: c for c in columns}
    candidates = []
    for cov in coverages:
        facts = by_name[cov.column]
        if not facts.unique or (cov.share < MIN_ID_COVERAGE and cov.column != same_name):
            continue
        if cov.found == 0:
            continue
        named = cov.column == same_name
        tier = 3 if named else (2 if any(t in ID_WORDS for t in name_tokens(cov.column)) else 1)
        why = "the interactions' name for it" if named else "unique per row"
        candidates.append(Candidate(cov.column, tier, f"{why}; holds {_coverage_text(cov)}"))
    result = choose(role, candidates, columns)
    if isinstance(result, Question) and not result.options:
        best = max(coverages, key=lambda c: c.share, default=None)
        near = f" (best: {best.column!r} holds {_coverage_text(best)})" if best else ""
        return Question(f"No unique column holds the ids the interactions use{near}.", role.flag)
    return result


def infer_items(
    columns: Sequence[ColumnFacts], coverages: Sequence[IdCoverage], same_name: str, hints: ItemHints
) -> ItemGuess | list[Question]:
    """The catalog's id, category and text template, or the questions to answer first."""
    questions: list[Question] = []
    id_guess = choose_id(ITEM_ID, columns, coverages, same_name, hints.id)
    if isinstance(id_guess, Question):
        return [id_guess]
    rest = [c for c in columns if c.name != id_guess.column]
    category = from_flag(CATEGORY, hints.category, columns) or choose(CATEGORY, _category_candidates(rest), rest)
    if isinstance(category, Question):
        questions.append(category)
    text = _text_guess(rest, category.column if isinstance(category, ColumnGuess) else None, hints.text, columns)
    if isinstance(text, Question):
        questions.append(text)
    if questions or isinstance(text, Question) or isinstance(category, Question):
        return questions
    coverage = next(c for c in coverages if c.column == id_guess.column)
    return ItemGuess(id_guess, coverage, category, text, tuple(_list_notes(rest, category.column)))


def _category_candidates(columns: Sequence[ColumnFacts]) -> list[Candidate]:
    out = []
    for facts in columns:
        if facts.kind != "text":
            continue
        splittable = facts.list_separator in SPLIT_SEPARATORS
        short_vocabulary = facts.n_distinct <= min(_MAX_CATEGORIES, facts.n_values // 2)
        tier = name_tier(facts.name, (), _CATEGORY_WORDS, ID_WORDS | {"name", "main", "primary"})
        if tier and (splittable or short_vocabulary):
            out.append(Candidate(facts.name, 2, f"named like a category; {facts.describe()}"))
        elif splittable:
            out.append(Candidate(facts.name, 1, f"the only hint is its values; {facts.describe()}"))
    return out


def _text_guess(
    rest: Sequence[ColumnFacts], category: str | None, flag: tuple[str, ...] | None, columns: Sequence[ColumnFacts]
) -> TextGuess | Question:
    if flag == ():
        return TextGuess((), "", f"none (set by {TEXT_FLAG} {NONE})")
    if flag is not None:
        missing = [c for c in flag if c not in {f.name for f in columns}]
        if missing:
            found = ", ".join(repr(c.name) for c in columns)
            return Question(f"{TEXT_FLAG}: no column {missing[0]!r} in the items (columns: {found}).", TEXT_FLAG)
        return TextGuess(flag, template(flag), f"set by {TEXT_FLAG}")
    words = [f for f in rest if f.kind == "text" and f.mean_chars >= MIN_TEXT_CHARS and not _is_url(f)]
    words = [f for f in words if not set(f.name) & _TEMPLATE_SPECIAL]
    titles = [f.name for f in words if set(name_tokens(f.name)) & _TITLE_WORDS]
    ordered = titles + [f.name for f in words if f.name == category and f.name not in titles]
    ordered += [f.name for f in words if f.name not in ordered]
    if not ordered:
        return TextGuess((), "", "no column holds words (titles, descriptions)")
    return TextGuess(tuple(ordered), template(ordered), "the columns that hold words, a title first")


def template(columns: Sequence[str]) -> str:
    """('title', 'genres') -> '{title}. Genres: {genres}'; the first column goes without a label."""
    if not columns:
        return ""
    parts = [f"{{{columns[0]}}}"]
    parts += [f"{' '.join(name_tokens(c)).capitalize() or c}: {{{c}}}" for c in columns[1:]]
    return ". ".join(parts)


def _is_url(facts: ColumnFacts) -> bool:
    return bool(facts.examples) and all(e.startswith(("http://", "https://", "www.")) for e in facts.examples)


def _list_notes(columns: Sequence[ColumnFacts], category: str | None) -> list[str]:
    notes = []
    for facts in columns:
        sep = facts.list_separator
        if sep and sep not in SPLIT_SEPARATORS:
            used = "is the category but" if facts.name == category else "goes into the text only:"
            notes.append(
                f"items column {facts.name!r} holds '{sep}'-separated lists; it {used} recloop splits categories "
                "on '|' (and reads JSON lists), so each value stays one category. Rewrite it with '|' to split it."
            )
    return notes


def infer_users(
    columns: Sequence[ColumnFacts], coverages: Sequence[IdCoverage], same_name: str, flag: str | None
) -> UserGuess | list[Question]:
    """The user table's id column and its other (attribute) columns."""
    id_guess = choose_id(USER_ID, columns, coverages, same_name, flag)
    if isinstance(id_guess, Question):
        return [id_guess]
    coverage = next(c for c in coverages if c.column == id_guess.column)
    return UserGuess(id_guess, coverage, tuple(c for c in columns if c.name != id_guess.column))


def _coverage_text(cov: IdCoverage) -> str:
    return f"{cov.found:,} of the {cov.total:,} ids the interactions use ({cov.share:.0%})"
