"""One retrain round for a task, from the example store to a promoted or rejected
specialist: the loop's unit of work, run by `protege.improver.service` on its
triggers and by `protege improver round TASK` by hand.

1. Training data (`training_data.build_training_data`): every text in the store,
   voted on by the task's LFs (rules, Python, prompts to the FM, reviewer feedback,
   the FM's recorded answers), combined by the label model; plus train-split gold.
2. The held-out gold split (fixed by text hash, never trained on) is the exam.
3. The FM's answers on that exam, cheapest first (`foundation_answers`):
   recorded in the store from prediction events (escalations and shadow runs,
   already paid for), then cached scores from earlier rounds, then at most
   `retrain.fm_eval_max` new texts scored now (~0.3 s a text on CPU for 2 labels,
   ~5 s for 77), chosen by text hash so that later rounds extend the same sample.
   The FM is scored, and the cascade threshold calibrated, on the exam rows that
   have an FM answer; with fewer than `retrain.fm_calibration_min` of them the
   threshold is left to the task's routing config.
4. `trainer.run_round`: distill (a Ray task when `use_ray`), evaluate the candidate,
   the champion and the FM side by side, calibrate, log everything to MLflow, gate,
   promote or reject (a ModelEvent either way).

Prompt LFs are the expensive LFs on CPU: each scores at most `retrain.prompt_lf_budget`
new texts per round (the newest first) and abstains on the texts it has not scored
yet; their scores are cached in the store, so coverage grows round by round.

One round at a time per task: the `RoundLedger` lease across processes, and
`run_round`'s lock within one.

>>> result = run_cycle(task, store, registry, settings, publish=producer.publish)  # doctest: +SKIP
>>> result.outcome, result.version                                               # doctest: +SKIP
('promoted', '3')
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import sqlalchemy as sa

from protege.config import PromptLFSpec, Settings, TaskSpec
from protege.improver.analysis import lf_report
from protege.improver.labeling import DataPoint, LabelingFunction
from protege.improver.prompt_lfs import PromptLF
from protege.improver.rounds import RoundLedger
from protege.improver.sources import SOURCES, default_model_name, task_lfs
from protege.improver.store import ExampleStore, events, predictions, text_hash
from protege.improver.trainer import RoundResult, TrainingInProgress, run_round
from protege.improver.training import TrainingSet
from protege.improver.training_data import TrainingData, build_training_data
from protege.registry import Publish, Registry, registered_name

log = logging.getLogger(__name__)

SERVING_PROMPT_LF = "serving_prompt"  # the cache key's name for the task's own prompt


class NotReady(RuntimeError):
    """The store does not hold enough to train and judge a candidate; the message says what."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lazy_backend(settings: Settings) -> Callable[[], object]:
    """A zero-argument factory that loads the deployment's FM once, when first called."""
    from protege.foundation.backend import create_backend

    return functools.cache(lambda: create_backend(settings))


# --------------------------------------------------------------------------- the FM's answers


@dataclass(frozen=True)
class FoundationAnswers:
    """The FM's probabilities on some rows of the exam, and where they came from."""

    probabilities: np.ndarray  # [len(rows), C]
    rows: np.ndarray  # indices into the exam's texts
    recorded: int  # from prediction events in the store
    cached: int  # scored in an earlier round
    scored: int  # scored in this round
    exam: int  # texts in the exam

    def summary(self) -> dict:
        return {"rows": len(self.rows), "exam": self.exam, "recorded": self.recorded,
                "cached": self.cached, "scored": self.scored}


def serving_prompt_scorer(task: TaskSpec, backend, cache, model_name: str) -> PromptLF:
    """The FM asked with the task's serving prompt, through the prompt LFs' cached scorer."""
    spec = PromptLFSpec(name=SERVING_PROMPT_LF, threshold=0.0, **task.prompt.model_dump())
    return PromptLF(spec, task, backend, cache, model_name)


def recorded_foundation(store: ExampleStore, task: TaskSpec,
                        hashes: set[str]) -> dict[str, np.ndarray]:
    """text hash -> FM probabilities from the latest prediction event that carried an FM
    answer. Events keep the top label and its probability; the rest of the mass is
    spread evenly (it keeps the argmax, which is what accuracy and calibration use)."""
    found: dict[str, np.ndarray] = {}
    if not hashes:
        return found
    c = len(task.labels)
    wanted = list(hashes)
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            rows = conn.execute(
                sa.select(predictions.c.text_hash, predictions.c.foundation_label,
                          predictions.c.foundation_confidence)
                .where((predictions.c.task == task.name)
                       & predictions.c.foundation_label.is_not(None)
                       & predictions.c.text_hash.in_(wanted[start:start + 500]))
                .order_by(predictions.c.timestamp)
            )
            for h, label, confidence in rows:
                if label not in task.label_names:
                    continue
                top = float(confidence) if confidence is not None else 1.0
                top = min(max(top, 1.0 / c), 1.0)
                row = np.full(c, (1.0 - top) / (c - 1))
                row[task.label_index(label)] = top
                found[h] = row
    return found


def foundation_answers(task: TaskSpec, store: ExampleStore, texts: Sequence[str],
                       backend, cap: int, model_name: str | None = None) -> FoundationAnswers:
    """The FM's answers on `texts`: recorded, then cached, then up to `cap` scored now.

    `backend` is a FoundationBackend or a zero-argument factory; it is loaded only when
    some text must be scored (`cap` > 0 and not everything is recorded or cached)."""
    texts = list(texts)
    hashes = [text_hash(t) for t in texts]
    recorded = recorded_foundation(store, task, set(hashes))
    probs: dict[int, np.ndarray] = {i: recorded[h] for i, h in enumerate(hashes) if h in recorded}
    n_recorded = len(probs)
    scorer = serving_prompt_scorer(task, backend, store, model_name or default_model_name())
    rest = [i for i in range(len(texts)) if i not in probs]
    cached = store.get_scores(scorer.key, [texts[i] for i in rest])
    for i in rest:
        if texts[i] in cached:
            probs[i] = cached[texts[i]]
    n_cached = len(probs) - n_recorded
    missing = sorted((i for i in rest if i not in probs), key=lambda i: hashes[i])[:cap]
    if missing and backend is not None:
        started = time.perf_counter()
        scored = scorer.scores([texts[i] for i in missing])
        probs.update(zip(missing, scored))
        log.info("%s: the FM scored %d held-out texts in %.1f s", task.name, len(missing),
                 time.perf_counter() - started)
    rows = np.array(sorted(probs), dtype=np.int64)
    matrix = (np.stack([probs[i] for i in rows]) if len(rows)
              else np.zeros((0, len(task.labels))))
    return FoundationAnswers(matrix.astype(np.float32), rows, n_recorded, n_cached,
                             len(probs) - n_recorded - n_cached, len(texts))


# --------------------------------------------------------------------------- prompt LF budget


def limit_prompt_scoring(lfs: Sequence[LabelingFunction], budget: int) -> None:
    """Make each prompt LF score at most `budget` uncached texts per apply (the newest,
    i.e. the last points) and abstain on the other uncached ones."""
    for lf in lfs:
        if isinstance(lf, PromptLF):
            lf.apply = _budgeted_apply(lf, budget)


def _budgeted_apply(lf: PromptLF, budget: int):
    score_and_vote = type(lf).apply

    def apply(points: Sequence[DataPoint]) -> list:
        texts = list(dict.fromkeys(x.text for x in points))
        cached = lf.cache.get_scores(lf.key, texts)
        missing = [t for t in texts if t not in cached]
        allowed = set(cached) | set(missing[::-1][:budget])
        chosen = [x for x in points if x.text in allowed]
        votes = dict(zip((id(x) for x in chosen), score_and_vote(lf, chosen))) if chosen else {}
        return [votes.get(id(x)) for x in points]

    return apply


# --------------------------------------------------------------------------- a round


@dataclass
class RoundInputs:
    """What a round trains and judges on, read from the store."""

    task: TaskSpec
    data: TrainingData
    train: TrainingSet
    exam_texts: list[str]  # held-out gold
    exam_labels: list[str]
    foundation: FoundationAnswers
    lf_report: dict

    @property
    def label_model(self) -> dict:
        return {"name": self.data.fit.choice.get("chosen", self.data.fit.kind),
                **self.data.fit.choice}

    def fm_for_round(self, min_rows: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(FM probabilities, their exam rows) when there are enough to calibrate on."""
        if len(self.foundation.rows) < min_rows:
            return None, None
        return self.foundation.probabilities, self.foundation.rows


def prepare_round(task: TaskSpec, store: ExampleStore, *, backend=None,
                  sources: Sequence[str] = SOURCES, model_name: str | None = None) -> RoundInputs:
    """Label the store's data for `task` and collect the exam and the FM's answers.

    Raises NotReady when there is too little held-out gold or nothing to train on."""
    spec = task.retrain
    model_name = model_name or default_model_name()
    lfs = task_lfs(task, sources, backend=backend, cache=store, model_name=model_name)
    limit_prompt_scoring(lfs, spec.prompt_lf_budget)
    data = build_training_data(task, store, sources, backend=backend, lfs=lfs)
    exam = data.holdout_gold()
    if len(exam) < spec.min_holdout_gold:
        raise NotReady(f"{task.name}: {len(exam)} held-out gold examples "
                       f"(< retrain.min_holdout_gold = {spec.min_holdout_gold})")
    train = data.to_training_set()
    present = len(set(train.targets.argmax(axis=1).tolist())) if len(train) else 0
    if present < 2:
        raise NotReady(f"{task.name}: {len(train)} training examples covering {present} "
                       "label(s); need at least two labels")
    texts, labels = [g.text for g in exam], [g.label for g in exam]
    answers = foundation_answers(task, store, texts, backend, spec.fm_eval_max, model_name)
    return RoundInputs(task, data, train, texts, labels, answers, lf_report(data))


@dataclass
class CycleResult:
    task: str
    trigger: str
    outcome: str  # promoted | rejected | skipped | failed
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    round: RoundResult | None = field(default=None, repr=False)
    foundation: dict | None = None  # FoundationAnswers.summary()
    data: dict = field(default_factory=dict)  # counts of what it trained on

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "round"}
        if self.round is not None:
            out["metrics"] = {k: (m.to_dict() if m else None)
                              for k, m in self.round.metrics.items()}
            out["threshold"] = (self.round.calibration.threshold
                                if self.round.calibration else None)
        return out


def should_use_ray(task: TaskSpec, settings: Settings) -> bool:
    """Ray when asked (`improver_ray`), or, on `auto`, when connected to a cluster
    (RAY_ADDRESS or an initialized Ray) and either the task wants GPUs (only Ray has
    them; an autoscaler may still be adding them) or its CPUs are free right now (a
    CPU request that cannot be placed would wait behind Serve's replicas forever)."""
    if settings.improver_ray == "never":
        return False
    if settings.improver_ray == "always":
        return True
    try:
        import ray
    except ImportError:
        return False
    if not (ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        return False
    if task.training.num_gpus > 0:
        return True
    if not ray.is_initialized():
        ray.init(log_to_driver=False)  # connects to RAY_ADDRESS
    free = ray.available_resources().get("CPU", 0.0)
    if free < task.training.num_cpus:
        log.info("%s: %.1f free Ray CPUs < %.1f asked: training in-process", task.name, free,
                 task.training.num_cpus)
        return False
    return True


def store_counts(store: ExampleStore, task: str) -> tuple[int, int]:
    """(feedback events, all events) stored for `task`."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.kind, sa.func.count())
                            .where(events.c.task == task).group_by(events.c.kind)).all()
    counts = dict(rows)
    return int(counts.get("feedback", 0)), int(sum(counts.values()))


def run_cycle(
    task: TaskSpec,
    store: ExampleStore,
    registry: Registry,
    settings: Settings,
    *,
    trigger: str = "manual",
    publish: Publish | None = None,
    backend=None,
    use_ray: bool | None = None,
    holder: str | None = None,
    sources: Sequence[str] = SOURCES,
    progress: bool = False,
) -> CycleResult:
    """One round for `task` under its lease: prepare, train, judge, promote or reject.

    Never raises for a round that cannot or does not succeed: the outcome says
    `skipped` (not enough data) or `failed` (with the error), and the ledger records
    it. Raises TrainingInProgress when another round of the task holds the lease.
    `backend` defaults to the deployment's FM, loaded only if a text must be scored."""
    started = time.perf_counter()
    holder = holder or default_holder()
    ledger = RoundLedger.of(store)
    feedback, n_events = store_counts(store, task.name)
    if not ledger.acquire(task.name, holder, lease_s=settings.improver_lease_s,
                          feedback=feedback, events=n_events, trigger=trigger):
        raise TrainingInProgress(f"{task.name}: another round holds the training lease "
                                 f"({ledger.state(task.name).holder})")
    result = CycleResult(task.name, trigger, "failed")
    try:
        backend = backend if backend is not None else lazy_backend(settings)
        log.info("%s: round started (%s; %d feedback, %d events stored)", task.name, trigger,
                 feedback, n_events)
        try:
            inputs = prepare_round(task, store, backend=backend, sources=sources)
        except NotReady as exc:
            result.outcome, result.reasons = "skipped", [str(exc)]
            log.info("%s: round skipped: %s", task.name, exc)
            return result
        result.foundation = inputs.foundation.summary()
        result.data = {"examples": len(inputs.data.points), "train": len(inputs.train),
                       "train_gold": int(inputs.train.gold.sum()),
                       "exam": len(inputs.exam_texts), "feedback_events": feedback}
        if use_ray is None:
            use_ray = should_use_ray(task, settings)
        outcome = judge(inputs, registry, publish=publish, use_ray=use_ray, progress=progress)
        record_round(store, registry, inputs, outcome, result, trigger)
        result.round = outcome
        result.version = outcome.version
        result.outcome = outcome.event.action.value
        result.reasons = list(outcome.event.reasons)
        return result
    except Exception as exc:  # noqa: BLE001 - a failed round is recorded, never fatal
        result.outcome, result.reasons = "failed", [f"{type(exc).__name__}: {exc}"]
        log.error("%s: round failed\n%s", task.name, traceback.format_exc())
        return result
    finally:
        result.seconds = round(time.perf_counter() - started, 2)
        ledger.release(task.name, holder, outcome=result.outcome, version=result.version,
                       detail="; ".join(result.reasons))
        log.info("%s: round %s in %.1f s: %s", task.name, result.outcome, result.seconds,
                 "; ".join(result.reasons))


def judge(inputs: RoundInputs, registry: Registry, *, train: TrainingSet | None = None,
          publish: Publish | None = None, use_ray: bool = False,
          progress: bool = False) -> RoundResult:
    """Train on `train` (default: the prepared training set) and run the gate against
    the champion and the FM on the prepared exam (`trainer.run_round`)."""
    task = inputs.task
    fm, rows = inputs.fm_for_round(task.retrain.fm_calibration_min)
    return run_round(
        task, train if train is not None else inputs.train,
        (inputs.exam_texts, inputs.exam_labels), registry,
        fm_test_predictions=fm, fm_rows=rows, lf_report=inputs.lf_report,
        label_model=inputs.label_model, publish=publish, use_ray=use_ray, progress=progress,
    )


def record_round(store: ExampleStore, registry: Registry, inputs: RoundInputs,
                 outcome: RoundResult, result: CycleResult, trigger: str) -> None:
    """Keep the run's LF report in the store, and the round's own facts (trigger, where
    the FM's answers came from, data counts) with the MLflow run."""
    task = inputs.task.name
    run_id = registry.client.get_model_version(registered_name(task), outcome.version).run_id
    store.save_report(task, "lf_report", {**inputs.lf_report, "run_id": run_id,
                                           "version": outcome.version}, run_id=run_id)
    registry.client.log_dict(run_id, {
        "trigger": trigger, "foundation_answers": inputs.foundation.summary(),
        "data": result.data, "outcome": outcome.event.action.value,
        "reasons": outcome.event.reasons,
    }, "cycle.json")
