"""`infer_starter`: from samples of the input files to a commented pipeline config and its explanation.

Interactions first (their columns, then a parse through the same normalizer ingest uses, then the
profile); then the item catalog and user table, whose id columns are found by the ids the interactions
use; then the models and settings the profile implies. Anything the data cannot settle raises one
`UsageError` (exit 2) listing every question with the flag that answers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from recloop.config.data import InteractionColumns, InteractionSource
from recloop.data.infer.facts import ColumnFacts, describe_table
from recloop.data.infer.interactions import InteractionGuess, InteractionHints, infer_interactions
from recloop.data.infer.plan import ModelPlan, plan_models
from recloop.data.infer.render import Budget, render
from recloop.data.infer.roles import Question
from recloop.data.infer.settings import checks_for, config_settings, header_lines
from recloop.data.infer.tables import (
    IdCoverage,
    ItemGuess,
    ItemHints,
    UserGuess,
    coverage_of,
    infer_items,
    infer_users,
)
from recloop.data.normalize import interactions_schema, normalize_interactions
from recloop.data.profile import DataProfile, profile_events
from recloop.data.readers import Chunk, as_strings
from recloop.data.sample import SourceSample
from recloop.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class SourceSpec:
    """One input: the rows read, and its path as the config file will name it."""

    sample: SourceSample
    config_path: str


@dataclass(frozen=True)
class StarterInputs:
    name: str
    interactions: SourceSpec
    items: SourceSpec | None
    users: SourceSpec | None
    budget: Budget | None
    endpoint_url: str | None = None  # S3 endpoint the s3:// inputs were read from


@dataclass(frozen=True)
class Hints:
    """Everything given on the command line to settle a column or unit."""

    interactions: InteractionHints = InteractionHints()
    items: ItemHints = ItemHints()
    user_id: str | None = None


@dataclass(frozen=True)
class ParsedEvents:
    """The interactions as ingest will read them: rows that parse, and what was wrong with the rest."""

    valid: pa.Table
    bad_rows: int
    first_issue: str | None


@dataclass(frozen=True)
class Starter:
    interactions: InteractionGuess
    items: ItemGuess | None
    users: UserGuess | None
    profile: DataProfile
    models: ModelPlan
    checks: tuple[str, ...]
    text: str  # the commented YAML


def infer_starter(inputs: StarterInputs, hints: Hints) -> Starter:
    """The config for `inputs`; UsageError listing every question the data leaves open."""
    sample = inputs.interactions.sample
    guess = infer_interactions(describe_table(sample.table), hints.interactions)
    if isinstance(guess, list):
        raise questions_error(guess)
    events = parse_events(inputs.interactions, guess)
    profile = profile_events(events.valid)
    items = _items(inputs.items, events.valid, guess, hints.items)
    users = _users(inputs.users, events.valid, guess, hints.user_id)
    questions = [q for part in (items, users) if isinstance(part, list) for q in part]
    if questions:
        raise questions_error(questions)
    assert not isinstance(items, list) and not isinstance(users, list)
    plan = plan_models(profile, items.text.columns if items else None)
    settings, validation_checks = config_settings(inputs, guess, items, users, profile, plan)
    checks = checks_for(inputs, guess, items, users, profile, events) + validation_checks
    text = render(header_lines(inputs, profile, plan, checks), settings, inputs.budget)
    return Starter(guess, items, users, profile, plan, tuple(checks), text)


def questions_error(questions: list[Question]) -> UsageError:
    lines = "\n".join(f"  - {q.message()}" for q in questions)
    return UsageError(f"recloop init needs an answer before it can write the config:\n{lines}")


def parse_events(spec: SourceSpec, guess: InteractionGuess) -> ParsedEvents:
    """Normalize the rows with the inferred mapping, exactly as ingest will; UsageError if none parse."""
    import numpy as np
    import pyarrow.compute as pc

    source = interaction_source(spec.config_path, guess)
    table = spec.sample.table
    chunk = Chunk(table, np.arange(1, table.num_rows + 1, dtype=np.int64))
    parsed = normalize_interactions(chunk, source, spec.config_path, interactions_schema([]))
    issues = parsed.column("ingest_issue")
    valid = parsed.filter(pc.is_null(issues))
    bad = parsed.num_rows - valid.num_rows
    first = None
    if bad:
        row = parsed.filter(pc.is_valid(issues)).slice(0, 1).to_pylist()[0]
        first = f"row {row['source_row']}: {row['ingest_issue']}"
    if valid.num_rows == 0:
        flags = "--user-col, --item-col, --time-col or --time-unit"
        raise UsageError(
            f"{spec.sample.flag} {spec.sample.path}: no row parses with the inferred columns ({first}); "
            f"check the columns printed above and set {flags}"
        )
    return ParsedEvents(valid, bad, first)


def interaction_source(path: str, guess: InteractionGuess) -> InteractionSource:
    columns = InteractionColumns(
        user=guess.user.column or "",
        item=guess.item.column or "",
        timestamp=guess.timestamp.column or "",
        rating=guess.rating.column,
        weight=guess.weight.column,
        event_type=guess.event_type.column,
    )
    return InteractionSource(path=path, columns=columns, timestamp_unit=guess.time_unit.unit)


def _coverages(table: pa.Table, facts: list[ColumnFacts], used: set[str]) -> list[IdCoverage]:
    out = []
    for column in facts:
        values = as_strings(table.column(column.name).combine_chunks()).to_pylist()
        out.append(coverage_of(column.name, {str(v).strip() for v in values if v is not None}, used))
    return out


def _items(
    spec: SourceSpec | None, events: pa.Table, guess: InteractionGuess, hints: ItemHints
) -> ItemGuess | list[Question] | None:
    if spec is None:
        return None
    facts = describe_table(spec.sample.table)
    used = set(events.column("item_id").unique().to_pylist())
    return infer_items(facts, _coverages(spec.sample.table, facts, used), guess.item.column or "", hints)


def _users(
    spec: SourceSpec | None, events: pa.Table, guess: InteractionGuess, flag: str | None
) -> UserGuess | list[Question] | None:
    if spec is None:
        return None
    facts = describe_table(spec.sample.table)
    used = set(events.column("user_id").unique().to_pylist())
    return infer_users(facts, _coverages(spec.sample.table, facts, used), guess.user.column or "", flag)
