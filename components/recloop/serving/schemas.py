"""The serving API's request and response models (pydantic; they make the OpenAPI schema).

Response models are fixed; the request bodies carry bounds from the config (`serving.limits`), so they are
built per app by `request_models(limits)`.
"""

# No `from __future__ import annotations`: pydantic reads the field annotations at runtime, and the request
# bodies refer to bounds built inside request_models from the config.
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from recloop.config import ServingLimitsConfig
from recloop.serving.middleware import REQUEST_ID_RE

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


def _json_number(value: Any) -> Any:
    # A JSON body's numbers are numbers: pydantic alone would take true for 1 and "5" for 5. 5.0 stays an
    # integer, as JSON Schema says.
    if isinstance(value, bool | str):
        raise ValueError(f"expected a JSON number, got {type(value).__name__} {value!r}")
    return value


# Constraints go inside the Annotated (e.g. `Annotated[int, Field(ge=1), JSON_NUMBER] | None`): on a union
# field pydantic would write them into the schema under its own names (ge, le), not JSON Schema's.
JSON_NUMBER = BeforeValidator(_json_number)


class Contribution(BaseModel):
    item_id: str = Field(description="A history item (or the anchor item) that made this recommendation likelier.")
    weight: float = Field(description="How much it contributed (model item-item weight or vector similarity).")


class ExplanationOut(BaseModel):
    method: str = Field(description="item_weights | item_vectors | co_occurrence, or the fallback policy name.")
    because: list[Contribution] = Field(description="History items that contributed most, strongest first.")
    shared_categories: list[str] = Field(description="The item's categories also found in the history.")
    shared_terms: list[str] = Field(description="Words of the item's text weighing most in the history's texts.")


class RecommendedItem(BaseModel):
    item_id: str
    rank: int = Field(description="1-based slot.")
    score: float = Field(description="Model score (fallback score for fallback slates); higher is better.")
    propensity: float = Field(description="Probability the serving policy put this item in this slot.")
    categories: list[str]
    explanation: ExplanationOut


class ModelRef(BaseModel):
    name: str
    version: int
    type: str


class SlateResponse(BaseModel):
    request_id: str = Field(description="Echo it in feedback (request_id) to link the event to this slate.")
    model: ModelRef
    policy: str = Field(description="greedy | epsilon_greedy")
    fallback: str | None = Field(
        description="Why the fallback served (unknown_user, no_history, cold_history, "
        "model_error); null for personalized slates."
    )
    search: str = Field(description="exact | ann | ann_exhausted | fallback:<policy> | similar")
    user_known: bool
    items: list[RecommendedItem]
    ignored_history_items: list[str] = Field(
        default_factory=list, description="Posted history items the model does not know."
    )


class FeedbackAccepted(BaseModel):
    accepted: int
    feedback_ids: list[str]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready | loading | no_model")
    model: str
    version: int | None = None
    detail: str | None = None


class RecommendationsRequest(Protocol):
    """What the routes read from a POST /v1/recommendations body (mypy checks the per-app class has it)."""

    @property
    def user_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def history(self) -> Sequence[str]: ...
    @property
    def k(self) -> int: ...
    @property
    def exclude_seen(self) -> bool: ...
    @property
    def category(self) -> str | None: ...


class FeedbackEventRequest(Protocol):
    """What the routes read from one event of a POST /v1/feedback body."""

    @property
    def item_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def value(self) -> float | None: ...
    @property
    def position(self) -> int | None: ...
    @property
    def timestamp(self) -> datetime | None: ...


class FeedbackRequest(Protocol):
    """What the routes read from a POST /v1/feedback body."""

    @property
    def events(self) -> Sequence[FeedbackEventRequest]: ...


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one app (pydantic models), bounded by its `serving.limits`."""

    recommendations: type[RecommendationsRequest]
    feedback: type[FeedbackRequest]


def request_models(limits: ServingLimitsConfig) -> RequestModels:
    IdStr = Annotated[str, StringConstraints(pattern=limits.id_pattern, max_length=256)]
    CategoryStr = Annotated[str, StringConstraints(min_length=1, max_length=128)]
    RequestIdStr = Annotated[str, StringConstraints(pattern=REQUEST_ID_RE.pattern)]

    class RecommendationsBody(BaseModel):
        """An ad-hoc history (anonymous or session user), optionally on top of a known user's history."""

        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        user_id: IdStr | None = Field(None, description="A known user's events come first in the history.")
        session_id: IdStr | None = Field(None, description="Logged (pseudonymized) to link a session's slates.")
        history: list[IdStr] = Field(
            default_factory=list, max_length=limits.max_history, description="Raw item ids, oldest first."
        )
        k: Annotated[int, JSON_NUMBER] = Field(limits.default_k, ge=1, le=limits.max_k)
        exclude_seen: bool = Field(True, strict=True)
        category: CategoryStr | None = None

    class FeedbackEvent(BaseModel):
        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        item_id: IdStr
        event_type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
            description="click, view, add_to_cart, purchase, rating, dismiss, ... (lower-case, <= 32 chars)"
        )
        request_id: RequestIdStr | None = Field(
            None, description="The slate's request_id, if the event responds to one."
        )
        user_id: IdStr | None = None
        session_id: IdStr | None = None
        value: Annotated[float, Field(allow_inf_nan=False), JSON_NUMBER] | None = Field(
            None, description="e.g. a rating or an amount."
        )
        position: Annotated[int, Field(ge=1, le=limits.max_k), JSON_NUMBER] | None = Field(
            None, description="1-based slot in that slate."
        )
        timestamp: datetime | None = Field(None, description="When it happened (ISO 8601); default: received time.")

        @field_validator("timestamp", mode="before")
        @classmethod
        def _iso_only(cls, value: Any) -> Any:
            # The spec says an ISO 8601 string; pydantic alone would also take epoch numbers, in unknown units.
            if value is not None and not isinstance(value, str | datetime):
                raise ValueError("expected an ISO 8601 time like 2026-01-31T12:00:00Z (epoch numbers are not accepted)")
            return value

    class FeedbackBody(BaseModel):
        model_config = ConfigDict(extra="forbid", regex_engine="python-re")
        events: list[FeedbackEvent] = Field(min_length=1, max_length=limits.max_feedback_events)

    return RequestModels(RecommendationsBody, FeedbackBody)
