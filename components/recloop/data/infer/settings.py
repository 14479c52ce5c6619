"""The config's sections as `Setting`s with their reasons, the header comment, and the list of checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recloop.data.infer.facts import ColumnFacts, epoch_date_text
from recloop.data.infer.interactions import InteractionGuess
from recloop.data.infer.plan import ModelPlan, preprocess_settings, validation_settings
from recloop.data.infer.render import Setting
from recloop.data.infer.roles import ColumnGuess
from recloop.data.infer.tables import ItemGuess, UserGuess
from recloop.data.profile import DataProfile

if TYPE_CHECKING:
    from recloop.data.infer.starter import ParsedEvents, SourceSpec, StarterInputs

# Consecutive events of a user sharing one timestamp above this share leave their order to the file.
TIE_WARNING_SHARE = 0.2


def config_settings(
    inputs: StarterInputs,
    guess: InteractionGuess,
    items: ItemGuess | None,
    users: UserGuess | None,
    profile: DataProfile,
    plan: ModelPlan,
) -> tuple[list[Setting], list[str]]:
    """Every section, in the order configs/*.yaml use, and the checks the validation settings bring."""
    data = [_interactions(inputs.interactions, guess)]
    if items is not None and inputs.items is not None:
        data.append(_items(inputs.items, items))
    if users is not None and inputs.users is not None:
        data.append(_users(inputs.users, users))
    coverage = items.coverage.share if items is not None else None
    validation, checks = validation_settings(profile, coverage)
    settings = [
        Setting("name", inputs.name, "--name"),
        Setting("store", tuple(_store(inputs)), "where artifacts, the model registry and serving logs live"),
        Setting("data", tuple(data), "the raw inputs the ingest step reads"),
    ]
    if validation:
        settings.append(Setting("validation", tuple(validation), "data-quality checks the data as read passes"))
    settings.append(Setting("preprocess", tuple(preprocess_settings(profile)), "filters and the split"))
    skipped = "; ".join(f"{s.type}: {s.reason}" for s in plan.skipped)
    comment = "candidates trained and compared" + (f"; left out: {skipped}" if skipped else "")
    settings.append(Setting("models", plan.chosen, comment))
    return settings, checks


def _store(inputs: StarterInputs) -> list[Setting]:
    root = f"file://.recloop/{inputs.name}/store"
    out = [Setting("root", root, "a folder next to this file; s3://bucket/prefix to share")]
    specs = (inputs.interactions, inputs.items, inputs.users)
    if inputs.endpoint_url and any(s is not None and s.config_path.startswith("s3://") for s in specs):
        out.append(Setting("endpoint_url", inputs.endpoint_url, "--endpoint-url: s3:// data is read with it"))
    return out


def _source(spec: SourceSpec) -> list[Setting]:
    sample = spec.sample
    files = f"{sample.n_files} files, all" if sample.n_files > 1 else "the file is"
    out = [
        Setting("path", spec.config_path, sample.flag),
        Setting("format", sample.format, f"{files} {sample.format} (from the name's ending)"),
    ]
    if sample.delimiter is not None:
        out.append(Setting("delimiter", sample.delimiter, "the header line is split by this character"))
    return out


def _column(guess: ColumnGuess) -> Setting:
    return Setting(guess.key.rsplit(".", 1)[1], guess.column, guess.reason)


def _interactions(spec: SourceSpec, guess: InteractionGuess) -> Setting:
    columns = tuple(_column(g) for g in guess.columns if g.column is not None)
    body = _source(spec) + [
        Setting("columns", columns, "which source column holds what"),
        Setting("timestamp_unit", guess.time_unit.unit, guess.time_unit.reason),
    ]
    return Setting("interactions", tuple(body), "one row per event")


def _items(spec: SourceSpec, items: ItemGuess) -> Setting:
    body = _source(spec) + [_column(items.id)]
    if items.category.column is not None:
        body.append(_column(items.category))
    if items.text.columns:
        body.append(Setting("text", items.text.template, f"{items.text.reason}; text-aware models embed it"))
    else:
        body.append(Setting("text", f"{{{items.id.column}}}", f"{items.text.reason}: the id stands in"))
    return Setting("items", tuple(body), "the item catalog")


# Fewest values that make text a free-text attribute rather than a category, and most distinct values a
# category (or an integer code) may have.
FREE_TEXT_CHARS = 40
MAX_CATEGORY_VALUES = 50
MAX_CODE_VALUES = 20


def attribute_type(facts: ColumnFacts) -> tuple[str | None, str]:
    """The users-module type of a user table column (None: not an attribute), and why."""
    if facts.kind in ("empty", "datetime") or facts.unique:
        return None, f"{facts.short()}: not an attribute (set one under data.users.attributes if it is)"
    if facts.kind in ("integer", "number"):
        if facts.kind == "integer" and facts.n_distinct <= MAX_CODE_VALUES:
            return "categorical", f"{facts.short()}: few distinct integers, read as codes"
        return "numeric", facts.short()
    if facts.list_separator is not None and facts.list_separator != "json":
        return "multi", f"{facts.short()}"
    if facts.mean_chars >= FREE_TEXT_CHARS:
        return "text", f"{facts.short()}: free text"
    if facts.n_distinct <= MAX_CATEGORY_VALUES:
        return "categorical", facts.short()
    return None, f"{facts.short()}: too many values for a category; not an attribute"


def _attributes(users: UserGuess) -> list[Setting]:
    typed = []
    for facts in users.attributes:
        kind, reason = attribute_type(facts)
        if kind is None:
            continue
        body = [Setting("type", kind, reason)]
        if kind == "multi":
            body.append(Setting("separator", facts.list_separator, "what separates the values"))
        typed.append(Setting(facts.name, tuple(body), ""))
    if not typed:
        return []
    return [
        Setting("attributes", tuple(typed), "typed for the models that read them (the ranker); validate checks them")
    ]


def _users(spec: SourceSpec, users: UserGuess) -> Setting:
    names = ", ".join(a.name for a in users.attributes) or "none"
    comment = f"the user table; other columns: {names}"
    return Setting("users", tuple(_source(spec) + [_column(users.id)] + _attributes(users)), comment)


def header_lines(inputs: StarterInputs, profile: DataProfile, plan: ModelPlan, checks: Sequence[str]) -> list[str]:
    sample = inputs.interactions.sample
    rows = f" (its first {sample.table.num_rows:,} rows)" if sample.truncated else ""
    h = profile.history
    lines = [
        f"Pipeline {inputs.name!r}, written by `recloop init` from the data; every value says why it was chosen.",
        f"Profile of {sample.path}{rows}: {profile.n_users:,} users, {profile.n_items:,} items, "
        f"{profile.n_events:,} events (density {profile.density:.2%}), "
        f"{epoch_date_text(profile.first_ms / 1000)}..{epoch_date_text(profile.last_ms / 1000)}.",
        f"Events per user: median {h.median:g}, 10th percentile {h.p10:g}, 90th {h.p90:g}, max {h.max:,}; "
        f"{profile.repeat_share:.1%} of events repeat an item the user had.",
        f"Order: {profile.order.explain()}.",
    ]
    if checks:
        lines += ["", "Check:"] + [f"- {c}" for c in checks]
    return lines + [""]


def checks_for(
    inputs: StarterInputs,
    guess: InteractionGuess,
    items: ItemGuess | None,
    users: UserGuess | None,
    profile: DataProfile,
    events: ParsedEvents,
) -> list[str]:
    """What a person should look at before running the pipeline."""
    checks: list[str] = []
    for spec in (inputs.interactions, inputs.items, inputs.users):
        if spec is not None:
            checks += _read_checks(spec)
    if events.bad_rows:
        share = events.bad_rows / inputs.interactions.sample.table.num_rows
        checks.append(
            f"{events.bad_rows:,} event rows ({share:.1%}) do not parse and validation will flag them, e.g. {events.first_issue}"
        )
    if guess.time_unit.check:
        checks.append(guess.time_unit.check)
    if profile.order.tie_share > TIE_WARNING_SHARE:
        checks.append(
            f"{profile.order.tie_share:.0%} of consecutive events of a user share a timestamp; "
            "their order is the file order"
        )
    if guess.rating.column is not None:
        checks.append(
            "every rated event counts as a positive; set preprocess.implicit.min_rating (e.g. 4) to keep only liked items"
        )
    if items is not None:
        checks += list(items.notes)
    if users is not None and users.attributes:
        left = [a for a in users.attributes if attribute_type(a)[0] is None]
        if left:
            names = ", ".join(f"{a.name} ({a.short()})" for a in left)
            checks.append(f"these user columns are not attributes: {names}; type them under data.users.attributes")
    checks.append(
        "the gate has no thresholds, so the best candidate is blessed as is; after a first run set gate.absolute "
        "(e.g. {ndcg@10: <a value below the best>}) and gate.relative_to_champion"
    )
    return checks


def _read_checks(spec: SourceSpec) -> list[str]:
    sample = spec.sample
    out = []
    if sample.truncated:
        out.append(f"{sample.flag}: only the first {sample.table.num_rows:,} rows were profiled (--max-rows)")
    if sample.broken_rows:
        out.append(f"{sample.flag}: {sample.broken_rows:,} rows could not be split into fields")
    return out
