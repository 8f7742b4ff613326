"""What a demo run takes (kept apart from the runner so that `protege --help` stays quick)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

# Knobs whose good value depends on the task: the CPU FM answers a 2-label youtube text
# in ~0.4 s but a 77-intent banking77 one in ~5-8 s, so on banking77 fifty reviews take
# ~25 minutes of day-0 traffic. There the task owner brings 1,000 labels (10 % of train;
# a fifth of them the gate's exam), reviewers answer half the predictions (one review an
# item) and the improver also trains on a timer. The FM scores 8 exam or calibration
# texts per round, toward the 50 calibration rows the cascade threshold needs.
TASK_PRESETS: dict[str, dict[str, object]] = {
    "banking77": {
        "gold": 1000,
        "exam_gold": 0,
        "reviews_needed": 1,
        "review_share": 0.5,
        "retrain_every": 20,
        "retrain_minutes": 3.0,
        "fm_eval_max": 8,
        "max_minutes": 9.0,
    },
}


@dataclass
class DemoOptions:
    """What `protege demo` takes; each default is the one `make run` uses."""

    task: str = "youtube-spam"
    split: str = "train"
    seed: int = 0
    limit: int | None = None  # texts to replay; None: the rest of the split
    # The task owner's labeled examples, imported as gold before the replay: the first
    # `gold` texts of the shuffled split (never replayed; a fifth of them, by text hash,
    # fall in the exam and a tenth in the calibration set, the rest train), then an
    # evaluation set: the first `exam_gold` texts of the exam and calibration buckets
    # (~2/3 exam), replayed first as the morning's traffic the owner labeled, so that
    # the FM's answers on them are recorded. The gate needs `exam.min_rows` (30) trusted
    # exam rows to decide, and a first candidate must beat the model trained on the
    # reviewed rows alone with significance, which ~100 exam rows can show; calibrating
    # the cascade needs 50 calibration rows with an FM answer.
    gold: int = 0
    exam_gold: int = 160
    # Reviewers take items from the review queue; an item leaves it after this many
    # (2: their agreement makes trusted gold; with auth off nobody holds a trusted key).
    reviews_needed: int = 1
    # Reviewers answer 8 % of the predictions: the loop earns its keep where most traffic
    # goes unreviewed, and its first candidate must beat a model trained on the reviews
    # alone. At 30 % the train bucket was nearly all reviewed at the first round, the
    # labeling functions had nothing left to add, and the gate (rightly) rejected every
    # candidate as no better than the reviews-only model.
    review_share: float = 0.08  # of the predictions: the verdicts reviewers send
    error_rate: float = 0.05  # of the reviews, wrong
    concurrency: int = 4  # requests in flight; the CPU FM batches what arrives together
    review_every_s: float = 1.0  # how often reviewers catch up with the traffic
    # On day 0 the CPU FM answers everything at ~0.35 s a text (more on a busy machine),
    # so 40 feedback events (~500 requests at an 8 % share) take four to five minutes,
    # and ~28 of them fall in the train bucket: enough for gold stacking (20). Passed to
    # `protege improver run`.
    retrain_every: int = 40  # new feedback events between training rounds
    retrain_minutes: float | None = None  # also retrain on a timer
    # On CPU the FM is by far a round's slowest part: on a busy 2-core machine, sharing
    # the cores with the FM that serves the replay, prompt LFs took 5 minutes of a round
    # and scoring 16 held-out texts 2 more. The demo's rounds ask it nothing new: the FM
    # still votes, and is still judged and calibrated against, through the answers it gave
    # the replayed traffic (recorded in the prediction events; ~10 of the exam's texts at
    # the first round). Set in the run's copy of the tasks file.
    prompt_lf_budget: int = 0  # new texts each prompt LF scores per round (task default 64)
    fm_eval_max: int = 0  # held-out texts the FM scores per round (task default 64)
    max_minutes: float = 9.0  # the replay stops sending after this long (a whole run: ~9 min)
    out: Path | None = None  # run folder; default runs/demo-<task>-<UTC time>
    port: int | None = None  # default PROTEGE_HTTP_PORT, or a free one when that is taken
    window: int = 100  # requests averaged by the running figures
    extra_improver_args: list[str] = field(default_factory=list)

    @classmethod
    def for_task(cls, task: str, **chosen: object) -> DemoOptions:
        """The defaults, then the task's presets (`TASK_PRESETS`), then what the caller
        chose; a knob passed as None (a flag left out) keeps the preset or the default."""
        chosen = {k: v for k, v in chosen.items() if v is not None}
        return replace(cls(task=task), **{**TASK_PRESETS.get(task, {}), **chosen})
