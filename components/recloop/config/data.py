"""The data steps' sections: `data:` (sources), `validation:` and `preprocess:` (filters and splits)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recloop.config.base import Duration, StrictModel

DataFormat = Literal["auto", "csv", "tsv", "parquet", "jsonl"]


class InteractionColumns(StrictModel):
    """Maps source column names onto recloop's internal interaction schema."""

    user: str = Field("user_id", description="Column holding the user id.")
    item: str = Field("item_id", description="Column holding the item id.")
    timestamp: str = Field("timestamp", description="Column holding the event time (encoded as `timestamp_unit` says).")
    rating: str | None = Field(
        None,
        description="Column holding an explicit rating, used by preprocess.implicit.min_rating; None = no ratings.",
    )
    event_type: str | None = Field(
        None,
        description="Column holding the event type (click, purchase, ...), used by "
        "preprocess.implicit.event_weights; None = no types.",
    )
    weight: str | None = Field(
        None,
        description="Column holding a numeric event weight that models with use_weights read; None = every "
        "event weighs 1.",
    )
    context: list[str] = Field(default_factory=list, description="Extra columns kept as context features.")


class InteractionSource(StrictModel):
    """The interaction events: one row per (user, item, time) event."""

    path: str = Field(..., description="Local path, glob, or s3:// URI of the interaction events.")
    format: DataFormat = Field(
        "auto", description="File format; auto = from the file extension (.csv, .tsv, .parquet, .jsonl)."
    )
    columns: InteractionColumns = Field(
        InteractionColumns(), description="Which source columns hold the user, item, time and optional fields."
    )
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso"] = Field(
        "s", description="How the timestamp column is encoded: epoch units or ISO-8601 strings."
    )
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' (csv) or tab (tsv).")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files.")


class TagSource(StrictModel):
    """Free-text tags per item (MovieLens tags.csv), folded into the item text as `{tags}`."""

    path: str = Field(..., description="Local path, glob, or s3:// URI of the tag events (one row per item and tag).")
    format: DataFormat = Field(
        "auto", description="File format; auto = from the file extension (.csv, .tsv, .parquet, .jsonl)."
    )
    item: str = Field("item_id", description="Column holding the item id.")
    tag: str = Field("tag", description="Column holding the tag text.")
    max_tags: int = Field(20, ge=1, description="Most frequent tags kept per item.")
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' (csv) or tab (tsv).")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files.")


class ItemSource(StrictModel):
    """The item catalog: ids, categories and the text text-aware models embed."""

    path: str = Field(..., description="Local path, glob, or s3:// URI of the item catalog.")
    format: DataFormat = Field(
        "auto", description="File format; auto = from the file extension (.csv, .tsv, .parquet, .jsonl)."
    )
    id: str = Field("item_id", description="Column holding the item id (matches interactions.columns.item).")
    category: str | None = Field(None, description="Column holding categories; '|'-separated lists allowed.")
    text: str = Field(
        "{title}",
        description="Template rendering an item's text from its columns, e.g. '{title}. Genres: {genres}'.",
    )
    tags: TagSource | None = Field(
        None, description="Optional free-text tags per item, folded into the item text as `{tags}`."
    )
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' (csv) or tab (tsv).")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files.")

    @field_validator("text")
    @classmethod
    def _check_template(cls, v: str) -> str:
        fields = template_fields(v)
        if not fields:
            raise ValueError(f"the text template must reference at least one column like '{{title}}' (got {v!r})")
        return v


class UserAttribute(StrictModel):
    """One attribute column of the user table, its type and what values it may take."""

    type: Literal["categorical", "numeric", "multi", "text"] = Field(
        ...,
        description="categorical (one value of a few, e.g. an age band), numeric, multi (a list, e.g. "
        "'jazz|cooking') or text (free text, e.g. a profile; read by the language model only).",
    )
    separator: str = Field("|", min_length=1, description="multi: what separates the values of one cell.")
    allowed: list[str] | None = Field(
        None, description="categorical or multi: the only values allowed; others are invalid (reported, then null)."
    )
    range: tuple[float, float] | None = Field(
        None, description="numeric: [low, high]; values outside are invalid (reported, then null)."
    )
    max_missing: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Largest share of users (of the table) with no valid value; more fails validation "
        "(validation.on_failure decides what that means).",
    )

    @model_validator(mode="after")
    def _check(self) -> UserAttribute:
        if self.range is not None and (self.type != "numeric" or self.range[0] > self.range[1]):
            raise ValueError("range: only numeric attributes have one, as [low, high] with low <= high")
        if self.allowed is not None and self.type not in ("categorical", "multi"):
            raise ValueError("allowed: only categorical and multi attributes list their values")
        return self


class UserSource(StrictModel):
    """The user table: ids and, where configured, typed attributes the ranking stage reads."""

    path: str = Field(..., description="Local path, glob, or s3:// URI of the user table.")
    format: DataFormat = Field(
        "auto", description="File format; auto = from the file extension (.csv, .tsv, .parquet, .jsonl)."
    )
    id: str = Field("user_id", description="Column holding the user id (matches interactions.columns.user).")
    attributes: dict[str, UserAttribute] = Field(
        default_factory=dict,
        description="Attribute columns by name, each with its type (e.g. `age_group: {type: categorical}`); "
        "validate checks them and preprocess writes them, typed, for the models. Unlisted columns are kept "
        "as text but not read by models.",
    )
    profile: str | None = Field(
        None,
        description="Template rendering a user's profile text from attribute columns, e.g. "
        "'{age_group}, lives in the {region}'; None = no profile text.",
    )
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' (csv) or tab (tsv).")
    encoding: str = Field("utf-8", description="Text encoding of csv/tsv/jsonl files.")

    @model_validator(mode="after")
    def _check_profile(self) -> UserSource:
        if self.profile is not None:
            unknown = [f for f in template_fields(self.profile) if f not in self.attributes]
            if not template_fields(self.profile) or unknown:
                raise ValueError(
                    f"profile: the template must reference configured attributes like '{{age_group}}' "
                    f"(not configured: {', '.join(unknown) or 'none referenced'})"
                )
        return self


class DataConfig(StrictModel):
    """The raw inputs of the ingest step."""

    interactions: InteractionSource = Field(
        ..., description="The interaction events (user, item, time, optional rating/event type/weight)."
    )
    items: ItemSource | None = Field(
        None, description="Optional item catalog: ids, categories and the text template text-aware models read."
    )
    users: UserSource | None = Field(
        None,
        description="Optional user table: ids (users without events are reported) and typed attributes "
        "(`attributes`) for the models that read them.",
    )
    since: datetime | None = Field(None, description="Watermark: ingest only events after this time.")
    chunk_rows: int = Field(250_000, ge=1_000, description="Rows read per chunk; bounds ingest memory.")


def template_fields(template: str) -> list[str]:
    """Column names referenced by a `{name}` text template."""
    import string

    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise ValueError(f"malformed text template {template!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------- validation


class ValidationConfig(StrictModel):
    """Data-quality checks run by the validate step on the ingested data."""

    on_failure: Literal["fail", "quarantine", "warn"] = Field(
        "fail", description="fail: stop (exit 3); quarantine: set bad rows aside and go on; warn: log only."
    )
    min_valid_share: float = Field(
        0.9, ge=0, le=1, description="With quarantine: the share of valid rows below which the step still fails."
    )
    min_rows: int = Field(1, ge=0, description="Minimum number of interactions.")
    max_duplicate_rate: float = Field(0.05, ge=0, le=1, description="Max share of exact duplicate events.")
    future_tolerance: Duration = Field(timedelta(days=1), description="Allowed clock skew into the future.")
    min_catalog_coverage: float = Field(
        0.95, ge=0, le=1, description="Min share of interaction items present in the catalog (if one is given)."
    )
    rating_range: tuple[float, float] | None = Field(None, description="[min, max] allowed ratings.")
    allowed_event_types: list[str] | None = Field(
        None, description="Event types the data may contain; others are invalid rows. None = any type."
    )
    min_interactions_per_user: int = Field(1, ge=1, description="Users below this are reported.")
    min_interactions_per_item: int = Field(1, ge=1, description="Items below this are reported.")
    max_cold_start_share: float = Field(1.0, ge=0, le=1, description="Max share of catalog items without interactions.")
    data_docs: bool = Field(True, description="Render great-expectations Data Docs HTML to the store.")

    @field_validator("rating_range")
    @classmethod
    def _check_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"min must not exceed max (got {list(v)})")
        return v


# ---------------------------------------------------------------------------------------------- preprocess


class ImplicitConfig(StrictModel):
    """How explicit feedback becomes implicit positives."""

    min_rating: float | None = Field(None, description="Keep events with rating >= this (None keeps all).")
    event_weights: dict[str, float] | None = Field(
        None, description="Weight per event type; events of types not listed are dropped."
    )


class SplitConfig(StrictModel):
    """How events are split into train, valid and test; always by time, so no future event leaks into training."""

    method: Literal["leave_last_out", "time_cutoff"] = Field(
        "leave_last_out",
        description="leave_last_out: each user's last event is test, the one before valid; "
        "time_cutoff: events "
        "after a point in time are held out (closer to production).",
    )
    cutoff: datetime | None = Field(None, description="time_cutoff: events after this are held out.")
    valid_cutoff: datetime | None = Field(
        None, description="time_cutoff: events between this and `cutoff` form the validation split."
    )
    test_share: float = Field(
        0.1, gt=0, lt=1, description="time_cutoff without explicit cutoffs: latest share of events for test."
    )
    valid_share: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="time_cutoff without explicit cutoffs: the share of events "
        "before the test ones used for validation.",
    )

    @model_validator(mode="after")
    def _check_cutoffs(self) -> SplitConfig:
        if self.valid_cutoff and self.cutoff and self.valid_cutoff >= self.cutoff:
            raise ValueError("valid_cutoff must be earlier than cutoff")
        return self


class PreprocessConfig(StrictModel):
    """The preprocess step: cleaning, implicit feedback, min-count filters and the split."""

    dedupe: bool = Field(True, description="Drop exact duplicate (user, item, timestamp) events.")
    implicit: ImplicitConfig = Field(
        ImplicitConfig(), description="How ratings and event types become implicit positives and weights."
    )
    min_user_interactions: int = Field(
        3,
        ge=1,
        description="Drop users with fewer events (after implicit conversion); "
        "leave-last-out needs 3 for a train, valid and test event.",
    )
    min_item_interactions: int = Field(
        1, ge=1, description="Drop items with fewer events; raise it to cut the long tail of rarely seen items."
    )
    kcore: bool = Field(False, description="Iterate the min-count filters until both hold (k-core).")
    catalog_items: Literal["interacted", "all"] = Field(
        "interacted",
        description="Which items get ids: those with training interactions, or every catalog item "
        "(lets text-aware models recommend items nobody has interacted with yet). With `interacted`, validation "
        "and test events of items without a training event cannot be scored and are dropped (the preprocess "
        "summary's `heldout_events_dropped` counts them, with a warning); `all` keeps those whose item is in "
        "the catalog (data.items).",
    )
    split: SplitConfig = Field(SplitConfig(), description="How events are split into train, valid and test.")
