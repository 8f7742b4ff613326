"""The task spec: the YAML language in which a task is configured.

Every task is configuration: its labels (with the descriptions the foundation model
sees), the prompt, the routing policy and limits, its labeling functions, how its
specialists are trained and gated, and when it retrains. Many tasks share one
deployment. `load_tasks` reads and validates a tasks file; a bad file raises
`TasksFileError` with one line per problem, naming the file, the task and the field.

>>> tasks = load_tasks(DEFAULT_TASKS_FILE)
>>> tasks["youtube-spam"].label_names
['HAM', 'SPAM']
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TASKS_FILE = PROJECT_ROOT / "deploy" / "tasks.yaml"
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class StrictModel(BaseModel):
    """Config models reject unknown keys, so that a typo fails loudly at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(StrictModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, description="One line; shown to the FM in prompts.")
    verbalizer: str | None = Field(
        default=None, description="Words the FM scores for this label; defaults to the name."
    )

    @property
    def words(self) -> str:
        return self.verbalizer or self.name


class PromptSpec(StrictModel):
    """How the foundation model is asked. `{labels}`, `{text}` and `{examples}` are filled in."""

    template: str = Field(
        default=(
            "Classify the text into one of these labels.\n{labels}\n\n{examples}"
            "Text: {text}\nLabel:"
        )
    )
    examples: list[tuple[str, str]] = Field(
        default_factory=list, description="Optional few-shot (text, label) pairs."
    )
    describe_labels: bool = Field(
        default=True, description="List each label with its description (off: words only)."
    )
    length_normalize: bool = Field(
        default=False,
        description="Score labels by mean instead of summed token log-prob (helps multi-token labels).",
    )

    @field_validator("template")
    @classmethod
    def _has_text_slot(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("prompt template must contain {text}")
        return value


class Policy(str, Enum):
    cascade = "cascade"
    foundation_only = "foundation-only"
    specialist_only = "specialist-only"


class RoutingSpec(StrictModel):
    policy: Policy = Policy.cascade
    threshold: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Cascade: below this specialist confidence the FM answers instead.",
    )
    shadow_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of specialist answers that the FM also scores, off the critical path.",
    )


class LimitsSpec(StrictModel):
    # At most the API's own bounds (schemas.MAX_TEXT_CHARS, MAX_BATCH).
    max_text_chars: int = Field(
        default=2000, gt=0, le=100_000, description="Longer texts are a 422."
    )
    max_batch: int = Field(default=64, gt=0, le=1024, description="Most texts in one predict call.")
    top_k: int = Field(default=5, gt=0, description="How many label probabilities to return.")


# Labeling: the cheap, noisy sources of labels that the label model combines.


class RuleSpec(StrictModel):
    """A declarative labeling function: votes `label` when one of its keywords (a whole
    word or phrase) or its regex occurs in the text, and abstains otherwise."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    label: str
    keywords: list[str] = Field(default_factory=list)
    regex: str | None = None
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _one_matcher(self) -> RuleSpec:
        if bool(self.keywords) == (self.regex is not None):
            raise ValueError(f"rule {self.name!r}: give exactly one of 'keywords' or 'regex'")
        if any(not k.strip() for k in self.keywords):
            raise ValueError(f"rule {self.name!r}: empty keyword")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad regex {self.regex!r}: {exc}") from exc
        return self


class PromptLFSpec(PromptSpec):
    """A prompt labeling function: the FM asked another way; votes its top label only
    when that label's probability reaches `threshold`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    template: str
    threshold: float = Field(ge=0.0, le=1.0)

    def as_prompt(self) -> PromptSpec:
        return PromptSpec(**self.model_dump(include=set(PromptSpec.model_fields)))


class LabelModelSpec(StrictModel):
    kind: Literal["auto", "snorkel", "majority"] = Field(
        default="auto", description="auto: the better of the two on gold, recorded with the run."
    )
    epochs: int = Field(default=500, gt=0, description="Converges on youtube's 1.6k x 10 in < 1 s.")
    learning_rate: float = Field(
        default=0.01, gt=0.0, description="0.001 under-fits in 500 epochs."
    )
    l2: float = Field(
        default=0.01, ge=0.0, description="Keeps rare LFs' accuracies near the prior."
    )
    seed: int = 0
    min_gold: int = Field(
        default=20,
        ge=1,
        description="Fewer gold examples cannot tell the two apart: keep the default choice.",
    )
    stack: bool = Field(
        default=True,
        description="With enough reviewed training rows, label from the text and the votes "
        "together, weighed on those rows (gold stacking) instead of the votes alone.",
    )
    stack_min_gold: int = Field(
        default=20, ge=2, description="Reviewed training rows needed before stacking."
    )
    stack_vote_weight: float = Field(
        default=3.0, gt=0.0, description="A vote's weight against the text's n-grams."
    )
    stack_min_confidence: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="The stack labels a text only when its top label has this probability "
        "(else the label model, where an LF voted): with 77 labels and a few reviews each, "
        "a guess is noise.",
    )


class EmbeddingSourcesSpec(StrictModel):
    """Labeling functions in all-MiniLM-L6-v2's embedding space (see
    `improver.labeling.embedding`)."""

    zero_shot: bool = Field(
        default=False, description="Vote the label whose description the text is most like."
    )
    zero_shot_margin: float = Field(
        default=0.05, ge=0.0, description="Cosine lead over the runner-up needed to vote."
    )
    neighbours: bool = Field(
        default=False, description="Vote the label the most similar reviewed texts carry."
    )
    neighbours_k: int = Field(default=5, ge=1, description="Reviewed neighbours consulted.")
    neighbours_min_agreement: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Share of the neighbours that must agree."
    )
    neighbours_min_similarity: float = Field(
        default=0.5, ge=-1.0, le=1.0, description="Cosine similarity of the nearest, at least."
    )


class LabelingSpec(StrictModel):
    rules: list[RuleSpec] = Field(default_factory=list)
    python_modules: list[str] = Field(
        default_factory=list, description="Modules whose @labeling_function objects are imported."
    )
    prompt_lfs: list[PromptLFSpec] = Field(default_factory=list)
    embedding: EmbeddingSourcesSpec = Field(default_factory=EmbeddingSourcesSpec)
    feedback_votes: bool = Field(default=True, description="Reviewer verdicts vote as LFs.")
    foundation_votes: bool = Field(
        default=True, description="The served FM's own answer (from the prediction event) votes."
    )
    specialist_votes: bool = Field(
        default=False,
        description="Off: the specialist was trained on these LFs' labels, so its vote would "
        "echo them (correlated, not independent) and entrench its own errors.",
    )
    label_model: LabelModelSpec = Field(default_factory=LabelModelSpec)


# Improvement: how a candidate specialist is trained and gated.


class ExamSpec(StrictModel):
    """The gate's exam and the cascade's calibration set: trusted gold, held out by text
    hash. Trusted: imported by the task's owner, reviewed by a `trusted` key, or given
    the same label by `agreeing_reviewers` distinct keys."""

    fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of texts (by hash) in the exam bucket: graded on, never trained on.",
    )
    calibration_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="Share of texts (by hash) that calibrate the cascade threshold; never "
        "graded or trained on, so the threshold is not tuned on the gate's rows.",
    )
    agreeing_reviewers: int = Field(
        default=2,
        ge=2,
        description="Distinct reviewers (API keys) who must give a text the same label for "
        "it to grade without a trusted key; one key alone never can.",
    )
    min_rows: int = Field(
        default=30,
        ge=1,
        description="Fewer trusted exam rows cannot tell a candidate from a trivial answer "
        "(95 % Wilson half-width ~0.18 at 50 % accuracy): the round waits for more gold.",
    )
    min_foundation_rows: int = Field(
        default=20,
        ge=1,
        description="Exam rows with an FM answer needed to test the candidate against the FM.",
    )
    min_calibration_rows: int = Field(
        default=50,
        ge=1,
        description="Calibration rows with an FM answer needed to calibrate the cascade; "
        "fewer keep the configured threshold (20 rows could pick 0: never escalate).",
    )
    refresh_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Once this share of the exam's rows is new since its generation began, "
        "a new generation starts and the significance budget is spent afresh.",
    )

    @model_validator(mode="after")
    def _buckets_fit(self) -> ExamSpec:
        if self.fraction + self.calibration_fraction >= 1.0:
            raise ValueError(
                "exam.fraction + exam.calibration_fraction must leave texts to train on"
            )
        return self


class ReviewSpec(StrictModel):
    """The review queue (`GET /v1/tasks/{task}/review-queue`): which predictions reviewers
    see first."""

    reviews_needed: int = Field(
        default=1, ge=1, description="Distinct reviewers an item needs before it leaves the queue."
    )
    audit_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of queue items drawn uniformly at random from traffic, so that "
        "reviewed items still estimate accuracy without the queue's bias.",
    )
    random_first: int = Field(
        default=0,
        ge=0,
        description="Reviews a task gets drawn uniformly at random before the queue ranks "
        "(a fair first sample for the label model; ~50 is usual). Off by default: with the "
        "reviews-only baseline then fair too, a first round rarely beats it (see README).",
    )
    window: int = Field(
        default=2000,
        gt=0,
        description="Newest predictions the queue ranks: bounded work per request.",
    )
    low_margin: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Gap between the served answer's top two probabilities below which it "
        "is `low_margin`.",
    )
    second_looks: int = Field(
        default=1,
        ge=0,
        description="Reviewers an item gets beyond `reviews_needed` when its reviewers "
        "disagree: a tie-breaker, first in the queue.",
    )
    reservation_minutes: float = Field(
        default=10.0,
        gt=0.0,
        le=24 * 60,
        description="How long an item handed to a reviewer in the console is kept from "
        "the others: time to read and judge it.",
    )


class GateSpec(StrictModel):
    """What a candidate must show on held-out gold data before it may serve."""

    min_accuracy: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Absolute floor; 0.5 is a coin flip on binary tasks: set it per task.",
    )
    min_gain: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Accuracy the candidate must gain over the champion.",
    )
    significance: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="Level of the one-sided paired tests that the candidate beats the champion "
        "(or each trivial answer), spent across the decisions made on the same exam rows.",
    )
    test: Literal["mcnemar", "bootstrap"] = Field(
        default="mcnemar", description="Paired test: exact McNemar, or a paired bootstrap."
    )
    bootstrap_rounds: int = Field(default=2000, gt=0, description="Resamples for `bootstrap`.")
    max_class_drop: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Largest fall in any one class's recall vs the champion (when the fall "
        "is also significant; see min_class_support).",
    )
    min_class_support: int = Field(
        default=10,
        ge=1,
        description="Exam rows a class needs before its recall is checked: at 2-3 rows one "
        "flipped answer is a 0.33 drop. Checked classes share `significance` (Bonferroni).",
    )
    confidence_level: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        description="Of the intervals a decision carries (Wilson for accuracies, paired "
        "bootstrap for gains).",
    )
    cascade_target_accuracy: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Cascade calibration target; unset: the FM-only accuracy on the same data.",
    )


class LoraSpec(StrictModel):
    """The `lora` family: a LoRA adapter of the foundation model, trained on the soft
    labels through the task's own prompt and label words. Defaults fit a CPU job: SmolLM2-135M
    trains at ~0.9 s an example on 2 cores (youtube comments), so 60 steps of 8 take ~7 min."""

    steps: int = Field(default=60, gt=0, description="AdamW steps (batches) of training.")
    rank: int = Field(default=8, gt=0, description="LoRA rank of q_proj and v_proj.")
    lr: float = Field(default=2e-3, gt=0.0, description="AdamW learning rate of the adapter.")
    batch_size: int = Field(default=8, gt=0, description="Texts per step.")
    max_examples: int = Field(
        default=2000, gt=0, description="Training rows drawn (seeded) from the training set."
    )


class TrainingSpec(StrictModel):
    """Specialist families to distill into (the better on validation is kept) and their knobs."""

    families: list[Literal["tfidf", "minilm", "minilm-ft", "minilm-setfit", "lora"]] = Field(
        default_factory=lambda: ["tfidf", "minilm"],
        min_length=1,
        description="tfidf, minilm (frozen encoder + head), minilm-ft (the encoder fine-tuned "
        "too; ~10x minilm's training time on CPU, so opt in), minilm-setfit (the encoder "
        "tuned contrastively on pairs, then minilm's head; opt in too), lora (a LoRA "
        "adapter of the FM, served by the FM deployment; opt in).",
    )
    seed: int = 0
    num_gpus: float = Field(
        default=0.0, ge=0.0, description="Ray resource request; > 0 lands on GPU workers."
    )
    num_cpus: float = Field(default=1.0, gt=0.0)
    deadline_s: float | None = Field(
        default=None,
        gt=0.0,
        description="A training job still running after this long is stopped and the round "
        "fails; unset: PROTEGE_TRAINING_DEADLINE_S.",
    )
    epochs: int = Field(
        default=200, gt=0, description="MiniLM head: most full-batch L-BFGS iterations."
    )
    minilm_c: float | None = Field(
        default=None,
        gt=0.0,
        description="Inverse L2 strength of the MiniLM head (as sklearn's C); unset: 1 or 10 by "
        "3-fold cross-validation on the training rows (youtube likes 1, banking77 10).",
    )
    finetune_epochs: int = Field(
        default=3, gt=0, description="minilm-ft: passes over the training set (2-3 is usual)."
    )
    finetune_batch_size: int = Field(
        default=16, gt=0, description="minilm-ft: texts per step (small batches suit CPUs)."
    )
    finetune_lr: float = Field(
        default=3e-5, gt=0.0, description="minilm-ft: AdamW learning rate of the encoder."
    )
    finetune_head_lr: float = Field(
        default=1e-3,
        gt=0.0,
        description="minilm-ft: the head's learning rate (it starts from the frozen-feature fit).",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    setfit_pairs_per_text: int = Field(
        default=4, gt=0, description="minilm-setfit: pairs each text takes part in."
    )
    setfit_max_pairs: int = Field(
        default=4000, gt=0, description="minilm-setfit: most pairs per round (CPU time)."
    )
    tfidf_c: float = Field(
        default=10.0, gt=0.0, description="Inverse L2 strength of the TF-IDF logistic regression."
    )
    gold_weight: float = Field(
        default=1.0, gt=0.0, description="Weight of a gold (reviewed) example vs a soft one."
    )
    validation_fraction: float = Field(
        default=0.15,
        gt=0.0,
        lt=1.0,
        description="Held out of training to pick a family when no validation split is given.",
    )


class RetrainSpec(StrictModel):
    """When the improver trains a new candidate for the task, and what a round may spend.

    Triggers: every `every_feedback` new feedback events, every `every_minutes` (when
    anything new arrived), and on a RetrainRequest (`POST /v1/admin/tasks/{task}/retrain`).
    """

    every_feedback: int | None = Field(
        default=200,
        gt=0,
        description="New feedback events between rounds; unset: no feedback trigger.",
    )
    every_minutes: float | None = Field(
        default=None,
        gt=0.0,
        description="Timer trigger (only when events arrived since the last round); unset: off.",
    )
    fm_eval_max: int = Field(
        default=64,
        ge=0,
        description="Exam and calibration texts the improver may send to the FM per round when "
        "no FM output for them is recorded or cached (~0.3 s a text on CPU for 2 labels, "
        "~5 s for 77).",
    )
    prompt_lf_budget: int = Field(
        default=64,
        ge=0,
        description="New texts each prompt LF may score per round (scores are cached, so "
        "coverage grows round by round); the rest abstain until scored.",
    )
    window: int = Field(
        default=50_000,
        ge=1,
        description="The newest predictions a round reads (with their feedback): a round's "
        "time and memory stay flat however long the store's history.",
    )


class RetentionSpec(StrictModel):
    """How long the improver's store keeps a task's traffic (gold is kept forever)."""

    max_age_days: float | None = Field(
        default=90.0, gt=0.0, description="Older predictions and feedback are deleted; unset: kept."
    )
    max_predictions: int | None = Field(
        default=500_000,
        ge=1,
        description="Beyond this many, the oldest predictions (and their feedback) go; unset: all.",
    )


# End of Improvement specs.


class TaskSpec(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN)
    description: str = ""
    # What reviewers read beside each item in the console (plain text; blank lines
    # separate paragraphs).
    guidelines: str = Field(default="", max_length=20_000)
    labels: list[LabelSpec] = Field(min_length=2)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # Improvement
    gate: GateSpec = Field(default_factory=GateSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    labeling: LabelingSpec = Field(default_factory=LabelingSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    exam: ExamSpec = Field(default_factory=ExamSpec)
    review: ReviewSpec = Field(default_factory=ReviewSpec)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[LabelSpec]) -> list[LabelSpec]:
        names = [label.name for label in labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate labels: {duplicates}")
        return labels

    @model_validator(mode="after")
    def _examples_use_known_labels(self) -> TaskSpec:
        known = set(self.label_names)
        for _, label in self.prompt.examples:
            if label not in known:
                raise ValueError(f"prompt example uses unknown label {label!r}")
        return self

    @model_validator(mode="after")
    def _labeling_uses_known_labels(self) -> TaskSpec:
        known = set(self.label_names)
        for rule in self.labeling.rules:
            if rule.label not in known:
                raise ValueError(
                    f"task {self.name!r}: rule {rule.name!r} votes unknown label {rule.label!r}"
                )
        for spec in self.labeling.prompt_lfs:
            for _, label in spec.examples:
                if label not in known:
                    raise ValueError(
                        f"task {self.name!r}: prompt LF {spec.name!r} uses unknown label {label!r}"
                    )
        names = [r.name for r in self.labeling.rules] + [p.name for p in self.labeling.prompt_lfs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task {self.name!r}: duplicate labeling function names {duplicates}")
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def label_index(self, name: str) -> int:
        return self.label_names.index(name)


class TasksFile(StrictModel):
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        return tasks


class TasksFileError(ValueError):
    """A tasks file that cannot be used; the message has one line per problem, each
    naming the file, the task and the field."""


def load_tasks(path: Path | str) -> dict[str, TaskSpec]:
    """Read and validate a tasks YAML file (see `TasksFileError`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TasksFileError(f"{path}: tasks file not found") from None
    except OSError as exc:
        raise TasksFileError(f"{path}: cannot read the tasks file: {exc.strerror}") from None
    return parse_tasks(text, str(path))


def parse_tasks(text: str, source: str) -> dict[str, TaskSpec]:
    """Validate tasks YAML (or JSON) text; `source` names it in every error line (a file's
    path, or the setting the text came from)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TasksFileError(
            f"{source}{_yaml_position(exc)}: not valid YAML: {_yaml_problem(exc)}"
        ) from None
    try:
        parsed = TasksFile.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(source, raw, error) for error in exc.errors()]
        raise TasksFileError("\n".join(problems)) from None
    return {task.name: task for task in parsed.tasks}


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    return "; ".join(p for p in parts if p) or str(exc)


def _describe(source: str, raw: object, error: dict) -> str:
    """'SOURCE: task NAME: FIELD: what is wrong' for one pydantic error."""
    loc = list(error["loc"])
    where = source
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        index = loc[1]
        name = _task_name(raw, index)
        where += f": task {name!r}" if name else f": task #{index + 1}"
        loc = loc[2:]
    field = _field_path(loc)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (a typo, or a value with an unquoted ':' or ',')"
    if field:
        where += f": {field}"
    return f"{where}: {message}"


def _task_name(raw: object, index: int) -> str | None:
    try:
        name = raw["tasks"][index]["name"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _field_path(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def valid_task_name(name: str) -> bool:
    return re.fullmatch(TASK_NAME_PATTERN, name) is not None
