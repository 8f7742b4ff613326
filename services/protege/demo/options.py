"""What a demo run takes (kept apart from the runner so that `protege --help` stays quick)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoOptions:
    """What `protege demo` takes; each default is the one `make run` uses."""

    task: str = "youtube-spam"
    split: str = "train"
    seed: int = 0
    limit: int | None = None  # texts to replay; None: the rest of the split
    # The task owner's labeled examples, imported as gold before the replay: the first
    # `gold` texts of the shuffled split (never replayed). The improver's gate needs a
    # held-out exam (a fifth of gold, by text hash) before it can judge a candidate.
    gold: int = 180
    review_share: float = 0.3  # of the predictions, reviewed
    error_rate: float = 0.05  # of the reviews, wrong
    concurrency: int = 4  # requests in flight; the CPU FM batches what arrives together
    # The first round must come early: on day 0 the CPU FM answers everything at
    # ~0.35 s a text (more on a busy machine), so 50 feedback events (~170 requests at
    # a 30 % share) take about two minutes. Passed to `protege improver run`.
    retrain_every: int = 50  # new feedback events between training rounds
    retrain_minutes: float | None = None  # also retrain on a timer
    # On CPU the FM is by far a round's slowest part: on a busy 2-core machine, sharing
    # the cores with the FM that serves the replay, prompt LFs took 5 minutes of a round
    # and scoring 16 held-out texts 2 more. The demo's rounds ask it nothing new: the FM
    # still votes, and is still judged and calibrated against, through the answers it gave
    # the replayed traffic (recorded in the prediction events; ~10 of the exam's texts at
    # the first round). Set in the run's copy of the tasks file.
    prompt_lf_budget: int = 0  # new texts each prompt LF scores per round (task default 64)
    fm_eval_max: int = 0  # held-out texts the FM scores per round (task default 64)
    fm_calibration_min: int = 8  # exam rows with an FM answer needed to calibrate (default 20)
    max_minutes: float = 7.0  # the replay stops sending after this long (a whole run: ~8 min)
    out: Path | None = None  # run folder; default runs/demo-<task>-<UTC time>
    port: int | None = None  # default PROTEGE_HTTP_PORT, or a free one when that is taken
    window: int = 100  # requests averaged by the running figures
    extra_improver_args: list[str] = field(default_factory=list)
