"""The improver's loop without training: when a round is due, one round at a time per
task, where the FM's exam answers come from, the prompt-LF budget, and a
RetrainRequest on the real broker starting a round."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sqlalchemy as sa

from protege.improver.data.examples import gather
from protege.improver.data.ledger import RoundLedger, RoundState
from protege.improver.data.store import ExampleStore
from protege.improver.judge.exam import foundation_answers, serving_prompt_scorer
from protege.improver.labeling import DataPoint, apply_lfs
from protege.improver.labeling.prompts import PromptLF
from protege.improver.loop import (
    NotReady,
    RoundReport,
    TrainingInProgress,
    label,
    run_round,
    training_set,
)
from protege.improver.service import ImproverService
from protege.improver.triggers import due
from protege.schemas import (
    FeedbackEvent,
    LabelProbability,
    ModelOutput,
    ModelRef,
    PredictionEvent,
    RetrainRequest,
    Route,
)
from protege.taskspec import DEFAULT_TASKS_FILE, RetrainSpec, load_tasks

TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE = TASKS["youtube-spam"]


class CountingFM:
    """A fake FM: SPAM when the text says "sub", counting what it scores."""

    ref = ModelRef(model="fake-fm", version="1")

    def __init__(self):
        self.scored: list[str] = []

    def predict_proba(self, task, texts, prompt=None):
        self.scored += texts
        return np.array([[0.1, 0.9] if "sub" in t else [0.8, 0.2] for t in texts])


def prediction(i: int, text: str, label: str = "HAM", fm: str | None = None) -> PredictionEvent:
    probs = [LabelProbability(label=label, probability=0.9)]
    return PredictionEvent(
        prediction_id=f"youtube-spam.{i}.sig",
        task="youtube-spam",
        text=text,
        label=label,
        probabilities=probs,
        route=Route.escalated if fm else Route.specialist,
        served_by=ModelRef(model="m", version="1"),
        latency_ms=1.0,
        foundation=ModelOutput(
            model=ModelRef(model="fm", version="1"),
            label=fm,
            probabilities=[LabelProbability(label=fm, probability=0.7)],
        )
        if fm
        else None,
    )


# --------------------------------------------------------------------------- triggers


def test_a_round_is_due_on_request_on_n_feedback_events_and_on_the_timer():
    spec = RetrainSpec(every_feedback=100, every_minutes=10)
    last = RoundState("t", started_at=1000.0, feedback_at_start=50, events_at_start=500)
    assert due(last, spec, feedback=149, events=600, now=1100.0) is None
    assert due(last, spec, feedback=150, events=600, now=1100.0) == "feedback"
    assert due(last, spec, feedback=60, events=600, now=1000.0 + 600) == "timer"
    assert due(last, spec, feedback=60, events=500, now=1000.0 + 6000) is None  # nothing new
    requested = RoundState("t", started_at=1000.0, requested_at=1001.0)
    assert due(requested, spec, feedback=0, events=0, now=1002.0) == "requested"
    served = RoundState("t", started_at=1001.0, requested_at=1000.0)  # served by that round
    assert due(served, spec, feedback=0, events=0, now=1002.0) is None
    running = RoundState("t", holder="other", lease_until=5000.0, requested_at=1.0)
    assert due(running, spec, feedback=10**6, events=10**6, now=1002.0) is None


def test_one_round_at_a_time_per_task_and_a_dead_holders_lease_expires():
    ledger = RoundLedger(sa.create_engine("sqlite://"))
    assert ledger.acquire("a", "one", lease_s=60, feedback=3, events=9)
    assert not ledger.acquire("a", "two", lease_s=60, feedback=3, events=9)
    assert ledger.acquire("b", "two", lease_s=60, feedback=0, events=0)  # tasks apart
    ledger.release("a", "one", outcome="promoted", version="4")
    state = ledger.state("a")
    assert state.holder is None and state.outcome == "promoted" and state.feedback_at_start == 3
    assert ledger.acquire("b", "three", lease_s=60, feedback=0, events=0) is False
    assert ledger.acquire("c", "crashed", lease_s=-1, feedback=0, events=0)
    assert ledger.acquire("c", "next", lease_s=60, feedback=0, events=0)  # expired: taken over


def test_a_round_of_a_task_whose_lease_is_held_raises(tmp_path):
    from protege.settings import Settings

    settings = Settings(home=tmp_path)
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    RoundLedger.of(store).acquire(YOUTUBE.name, "elsewhere", lease_s=60, feedback=0, events=0)
    with pytest.raises(TrainingInProgress, match="elsewhere"):
        run_round(YOUTUBE, store, registry=None, settings=settings)


def test_a_round_without_enough_held_out_gold_is_skipped_and_recorded(tmp_path):
    from protege.settings import Settings

    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.record_many([prediction(i, f"text number {i} sub") for i in range(30)])
    result = run_round(
        YOUTUBE,
        store,
        registry=None,
        settings=Settings(home=tmp_path),
        backend=CountingFM(),
        sources=("rule",),
    )
    assert result.outcome == "skipped"
    assert "the exam has 0 trusted gold rows (< exam.min_rows = 30" in result.reasons[0]
    assert RoundLedger.of(store).state(YOUTUBE.name).outcome == "skipped"


# --------------------------------------------------------------------------- the FM's answers


def test_fm_answers_come_recorded_then_cached_then_scored_up_to_the_cap():
    store = ExampleStore("sqlite://")
    texts = [f"comment {i} sub" if i % 2 else f"comment {i}" for i in range(10)]
    store.record_many([prediction(0, texts[0], fm="SPAM"), prediction(1, texts[1], fm="HAM")])
    fm = CountingFM()
    scorer = serving_prompt_scorer(YOUTUBE, fm, store, "fake-fm")
    scorer.scores(texts[2:4])  # an earlier round's
    fm.scored.clear()

    answers = foundation_answers(YOUTUBE, store, texts, fm, cap=3, model_name="fake-fm")
    assert (answers.recorded, answers.cached, answers.scored) == (2, 2, 3)
    assert len(fm.scored) == 3 and set(fm.scored) <= set(texts[4:])
    assert sorted(answers.rows.tolist())[:4] == [0, 1, 2, 3] and len(answers.rows) == 7
    by_row = dict(zip(answers.rows.tolist(), answers.probabilities.argmax(1).tolist()))
    assert by_row[0] == 1 and by_row[1] == 0  # the recorded labels, whatever the fake says
    assert answers.probabilities[0].tolist() == pytest.approx([0.3, 0.7])

    again = foundation_answers(YOUTUBE, store, texts, fm, cap=0, model_name="fake-fm")
    assert (again.recorded, again.cached, again.scored) == (2, 5, 0) and len(fm.scored) == 3


def test_prompt_lfs_score_at_most_their_budget_of_new_texts_per_round():
    store = ExampleStore("sqlite://")
    fm = CountingFM()
    lf = PromptLF(YOUTUBE.labeling.prompt_lfs[0], YOUTUBE, fm, store, "fake-fm", budget=2)
    points = [DataPoint(f"please sub {i}") for i in range(5)]
    first = apply_lfs([lf], YOUTUBE.label_names, points).L[:, 0].tolist()
    assert sorted(fm.scored) == ["please sub 3", "please sub 4"]  # the newest first
    assert first == [-1, -1, -1, 1, 1]
    second = apply_lfs([lf], YOUTUBE.label_names, points).L[:, 0].tolist()
    assert second == [-1, 1, 1, 1, 1] and len(fm.scored) == 4


def test_a_training_set_needs_two_labels(tmp_path):
    store = ExampleStore("sqlite://")
    events = []
    for i in range(300):
        events.append(prediction(i, f"only ham here number {i}"))
        events.append(
            FeedbackEvent(
                prediction_id=f"youtube-spam.{i}.sig",
                task="youtube-spam",
                verdict="up",
                reviewer="r",
            )
        )
    store.record_many(events)
    labeled = label(YOUTUBE, gather(store, YOUTUBE), store, CountingFM(), ("feedback",), "fake")
    with pytest.raises(NotReady, match="label"):
        training_set(YOUTUBE, labeled)


# --------------------------------------------------------------------------- the service


def test_a_retrain_request_on_the_broker_starts_one_round(kafka_settings, tmp_path):
    from protege.events.producer import EventProducer

    calls: list[str] = []

    def fake_round(task, store, registry, settings, *, trigger, **_):
        calls.append(trigger)
        RoundLedger.of(store).acquire(task.name, "fake", lease_s=60, feedback=0, events=0)
        RoundLedger.of(store).release(task.name, "fake", outcome="rejected")
        return RoundReport(task.name, trigger, "rejected")

    task = YOUTUBE.model_copy(update={"retrain": RetrainSpec(every_feedback=None)})
    settings = kafka_settings.model_copy(update={"improver_check_s": 0.2})
    service = ImproverService(
        settings,
        {task.name: task},
        registry=object(),
        publish=lambda e: None,
        ingest=False,
        run=fake_round,
    ).start()
    try:
        time.sleep(1.0)
        assert calls == []  # no trigger yet
        with EventProducer(settings).start() as producer:
            producer.publish(RetrainRequest(task="banking77"))  # not this improver's
            producer.publish(RetrainRequest(task=task.name))
            producer.flush()
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        service.stop()
    assert calls == ["requested"]
    assert [r.outcome for r in service.results] == ["rejected"]


def test_protege_improver_alone_runs_the_whole_loop_and_flags_override_the_triggers():
    from protege.cli import build_parser
    from protege.commands.improver import _tasks, handle_round, handle_run
    from protege.settings import Settings

    args = build_parser().parse_args(["improver"])  # the Helm chart's command
    assert args.handler is handle_run and not args.ingest_only
    args = build_parser().parse_args(
        [
            "improver",
            "run",
            "--task",
            "youtube-spam",
            "--retrain-every",
            "80",
            "--retrain-minutes",
            "5",
        ]
    )
    (task,) = _tasks(args, Settings()).values()
    assert task.name == "youtube-spam"
    assert (task.retrain.every_feedback, task.retrain.every_minutes) == (80, 5.0)
    assert build_parser().parse_args(["improver", "round", "banking77"]).handler is handle_round


def test_the_readmes_retrain_section_is_a_valid_retrain_spec():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("## The improver")
    block = re.search(r"```yaml\n(.*?)```", readme[start:], flags=re.DOTALL).group(1)
    spec = RetrainSpec(**yaml.safe_load(block)["retrain"])
    assert spec.every_feedback == 200 and spec.every_minutes == 60
