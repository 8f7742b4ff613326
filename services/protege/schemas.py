"""API bodies and Kafka events: the contract with clients and with the improver.

Events carry `schema_version`; consumers accept any version they know and
skip (and count) the rest, so producers can be upgraded first.
"""

from __future__ import annotations

import time
import uuid
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EVENT_SCHEMA_VERSION = 1

# Bounds of any predict body, whatever the task: a task's own `limits` (taskspec, which
# caps them at these) are checked after parsing; these make the parser refuse sooner.
MAX_BATCH = 1024
MAX_TEXT_CHARS = 100_000


class Body(BaseModel):
    """Request bodies: unknown fields are a 422, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class Route(str, Enum):
    specialist = "specialist"
    foundation = "foundation"
    escalated = "escalated"


class Verdict(str, Enum):
    up = "up"
    down = "down"
    # Withdraws the reviewer's earlier verdict on the prediction (the console's undo):
    # stored as the reviewer's latest verdict, which readers then leave out.
    retract = "retract"


class ModelRef(BaseModel):
    model: str = Field(description="Model family or name, e.g. 'tfidf-lr' or 'smollm2-135m'.")
    version: str


def _non_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text must not be empty or whitespace")
    return text


class PredictRequest(Body):
    """One `text`, or a batch in `texts` (up to the task's `max_batch`)."""

    text: str | None = Field(
        default=None, max_length=MAX_TEXT_CHARS, examples=["Check out my channel, subscribe!"]
    )
    texts: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_BATCH
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else _non_blank(value)

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, values: list[str] | None) -> list[str] | None:
        if values is not None:
            for value in values:
                _non_blank(value)
        return values

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    prediction_id: str
    label: str
    confidence: float
    probabilities: list[LabelProbability] = Field(description="Top-k labels, most likely first.")
    served_by: ModelRef
    route: Route
    degraded: bool = Field(
        default=False,
        description="The text should have gone to the foundation model, which could not "
        "answer in time: this is the specialist's answer.",
    )
    latency_ms: float


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class FeedbackRequest(Body):
    prediction_id: str = Field(min_length=1, max_length=200)
    verdict: Verdict
    label: str | None = Field(default=None, description="The correct label, when it differs.")
    reviewer: str | None = Field(
        default=None,
        max_length=200,
        description="Optional: must equal the name of the API key that sends the verdict "
        "(the reviewer is the key, never a field a client fills in).",
    )
    comment: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _retract_names_no_label(self) -> FeedbackRequest:
        if self.verdict is Verdict.retract and self.label is not None:
            raise ValueError("a 'retract' verdict withdraws the earlier one: give no 'label'")
        return self


class FeedbackResponse(BaseModel):
    accepted: bool
    prediction_id: str
    task: str
    event_id: str


class AdapterRef(BaseModel):
    """A task's champion that is a LoRA adapter of the FM: it answers the task's FM calls."""

    name: str = Field(description="The name it is served under, e.g. 'youtube-spam@v4'.")
    version: str
    base_model: str | None = Field(default=None, description="The FM it plugs into.")

    @property
    def ref(self) -> ModelRef:
        return ModelRef(model=self.name, version=self.version)


class TaskModels(BaseModel):
    foundation: ModelRef
    specialist: ModelRef | None
    specialist_error: str | None = None
    adapter: AdapterRef | None = Field(
        default=None, description="The champion adapter that answers this task's FM calls."
    )


class TaskSummary(BaseModel):
    name: str
    description: str
    labels: list[dict[str, str]]
    policy: str
    threshold: float = Field(
        description="The cascade threshold in use: the live specialist's calibrated one when "
        "it has one, else the task's configured one."
    )
    threshold_source: Literal["calibrated", "configured"]
    configured_threshold: float
    shadow_rate: float
    max_batch: int
    max_text_chars: int
    models: TaskModels


class ErrorBody(BaseModel):
    detail: str


class FoundationScoreRequest(Body):
    """The improver's question to the deployment's FM: `texts` under the task's prompt or
    one of its prompt LFs (by name), by the base model or a served adapter (by name)."""

    task: str = Field(max_length=200)
    texts: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] = Field(
        max_length=MAX_BATCH,
        description="Up to the task's `max_batch`; none: only the model's ref comes back.",
    )
    prompt: str | None = Field(
        default=None, max_length=100, description="A prompt LF's name; none: the task's prompt."
    )
    adapter: str | None = Field(
        default=None, max_length=200, description="A served adapter's name; none: the base model."
    )


class FoundationScoreResponse(BaseModel):
    task: str
    labels: list[str] = Field(description="The task's labels: the order of each row.")
    probabilities: list[list[float]]
    model: ModelRef
    digest: str = Field(
        description="Of the labels and the prompt the gateway used: the improver checks that "
        "its tasks file asks the same question."
    )


class ReviewItem(BaseModel):
    """A prediction that a review would teach the most about, and why it is in the queue."""

    prediction_id: str = Field(description="The item's id: send the verdict with it.")
    text: str
    label: str = Field(description="The label that was served.")
    confidence: float | None = None
    margin: float | None = Field(
        default=None, description="Gap between the served answer's top two probabilities."
    )
    route: str | None = None
    predicted_at: float
    reviews: int = Field(description="Distinct reviewers who have judged it so far.")
    score: float = Field(description="Higher first; audit items carry 0.")
    reasons: list[str] = Field(
        description="needs_another_review, low_margin, model_disagreement, lf_conflict, "
        "label_model_disagreement, uncertain (ranked by margin alone), or audit (drawn at "
        "random from traffic)."
    )


class ReviewQueue(BaseModel):
    task: str
    reviewer: str | None = Field(description="Whom the queue is for: their own items are left out.")
    window: int = Field(description="Recent predictions the queue was drawn from.")
    label_model: bool = Field(description="The last round's label model took part.")
    items: list[ReviewItem]


# The improver's internal API for the review console (`/review`): reservations, the item
# as a reviewer sees it, progress and agreement, and the task owner's reports.


class ReviewerRequest(Body):
    reviewer: str = Field(min_length=1, max_length=200)


class ItemRequest(ReviewerRequest):
    prediction_id: str = Field(min_length=1, max_length=200)


class ModelAnswerSummary(BaseModel):
    model: str | None = Field(default=None, description="'model:version', when recorded.")
    label: str
    confidence: float | None = None


class SourceVote(BaseModel):
    """One labeling function's vote on the item (prompt LFs: from their cache only)."""

    name: str
    source: str
    label: str | None = Field(description="None: the LF abstained.")


class ReviewCard(BaseModel):
    """One queue item as a reviewer judges it. Other reviewers' verdicts are left out:
    reviews stay independent."""

    task: str
    item: ReviewItem
    served_by: str | None = Field(default=None, description="'model:version' that answered.")
    probabilities: list[LabelProbability] = Field(
        default_factory=list, description="The served answer's top-k, most likely first."
    )
    specialist: ModelAnswerSummary | None = None
    foundation: ModelAnswerSummary | None = None
    votes: list[SourceVote] = Field(default_factory=list)
    reviewers_disagree: bool = Field(
        default=False, description="Earlier reviewers disagreed: this is a second look."
    )
    reserved_until: float = Field(description="No other reviewer gets the item before then.")


class Assignment(BaseModel):
    task: str
    reviewer: str
    card: ReviewCard | None = Field(description="None: nothing left to review.")
    waiting: int = Field(description="Other open items this reviewer could take now.")


class Undone(BaseModel):
    task: str
    reviewer: str
    prediction_id: str = Field(description="The item whose verdict was withdrawn; held again.")


class ReviewerProgress(BaseModel):
    reviewer: str
    today: int = Field(description="Verdicts since midnight UTC.")
    total: int
    thumbs_down: int
    thumbs_down_rate: float | None
    shared: int = Field(description="Items another reviewer judged too.")
    agreed: int = Field(description="Of those, items where this reviewer agreed with all others.")


class Agreement(BaseModel):
    items: int = Field(description="Items with two or more reviewers naming a label.")
    observed: float | None = Field(description="Share of agreeing reviewer pairs.")
    kappa: float | None = Field(description="Fleiss' kappa (raters may vary per item).")
    disagreements: int = Field(description="Items where reviewers disagree.")


class ReviewStats(BaseModel):
    task: str
    today_since: float
    reviewers: list[ReviewerProgress]
    agreement: Agreement


class TimelineBucket(BaseModel):
    start: float
    end: float
    predictions: int
    foundation: int = Field(description="Answered by the FM (route foundation or escalated).")
    gold: int = Field(description="Predictions whose text has a gold label.")
    correct: int = Field(description="Of those, the served label was the gold one.")


class Timeline(BaseModel):
    task: str
    buckets: list[TimelineBucket]


class Analysis(BaseModel):
    """`protege lf report` and `protege errors` for the browser (prompt LFs vote from
    their cache only: a page view never calls the FM)."""

    task: str
    lf_report: dict
    errors: dict[str, list[dict]]
    error_totals: dict[str, int]


# --------------------------------------------------------------------------- events


def new_event_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = EVENT_SCHEMA_VERSION
    event_id: str = Field(default_factory=new_event_id)
    timestamp: float = Field(default_factory=time.time)


class ModelOutput(BaseModel):
    """One model's answer to one text, as recorded in the event log."""

    model: ModelRef
    label: str
    probabilities: list[LabelProbability]


class PredictionEvent(Event):
    kind: Literal["prediction"] = "prediction"
    prediction_id: str
    task: str
    text: str
    label: str
    probabilities: list[LabelProbability]
    route: Route
    served_by: ModelRef
    specialist: ModelOutput | None = None
    foundation: ModelOutput | None = None
    shadow: bool = Field(default=False, description="The FM output was a shadow run.")
    degraded: bool = Field(default=False, description="Escalated, but the FM could not answer.")
    latency_ms: float

    @property
    def key(self) -> str:
        return self.prediction_id


class FeedbackEvent(Event):
    kind: Literal["feedback"] = "feedback"
    prediction_id: str
    task: str
    verdict: Verdict
    label: str | None = None
    reviewer: str = Field(description="The name of the API key that sent the verdict.")
    trusted: bool = Field(
        default=False, description="The key holds the `trusted` role: its verdicts may grade."
    )
    comment: str | None = None

    @property
    def key(self) -> str:
        return self.prediction_id


class ModelAction(str, Enum):
    promoted = "promoted"
    rolled_back = "rolled_back"
    rejected = "rejected"


class ModelEvent(Event):
    kind: Literal["model"] = "model"
    task: str
    model: ModelRef
    action: ModelAction
    metrics: dict[str, float | str | None] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return self.task


class RetrainRequest(Event):
    """Ask the improver to train a new candidate for `task` now (admin API or CLI);
    it travels on the models topic, which the improver reads."""

    kind: Literal["retrain"] = "retrain"
    task: str
    requested_by: str = "admin"

    @property
    def key(self) -> str:
        return self.task
