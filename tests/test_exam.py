"""The trusted exam: what grades a candidate, what calibrates the cascade, and how often
the same rows may decide.

Acceptance: 500 thumbs-up from one untrusted key move no gate decision; the calibration
and gate splits are disjoint; calibration never runs on a handful of rows."""

from __future__ import annotations

import numpy as np
import pytest

from protege import datasets
from protege.improver.data.examples import gather
from protege.improver.data.gold import CALIBRATION, EXAM, TRAIN, task_split
from protege.improver.data.store import ExampleStore
from protege.improver.judge.judgement import Champion, judge
from protege.improver.judge.spending import exam_use, record_decision
from protege.improver.labeling.labeled import label_examples
from protege.improver.labeling.sources import task_lfs
from protege.improver.loop import NotReady, exam_of
from protege.improver.training import TrainingSet, tfidf
from protege.schemas import FeedbackEvent, LabelProbability, ModelRef, PredictionEvent, Route
from protege.taskspec import DEFAULT_TASKS_FILE, TrainingSpec, load_tasks

_SPEC = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
TASK = _SPEC.model_copy(update={"retrain": _SPEC.retrain.model_copy(update={"fm_eval_max": 0})})
LABELS = TASK.label_names
TRAFFIC = 800  # youtube train texts replayed as traffic; the models learn from the rest


class NoFM:
    """The exam must not need the FM here (fm_eval_max 0): recorded answers only."""

    def predict_proba(self, task, texts, prompt=None):
        raise AssertionError("the FM was asked")


def prediction(i: int, text: str, label: str, fm: str | None = None) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"youtube-spam.{i}.sig",
        task="youtube-spam",
        text=text,
        label=label,
        probabilities=[LabelProbability(label=label, probability=0.6)],
        route=Route.foundation,
        served_by=ModelRef(model="fm", version="1"),
        latency_ms=1.0,
        timestamp=float(i),
    )


def verdict(i: int, reviewer: str, verdict: str = "up", label=None, trusted=False):
    return FeedbackEvent(
        prediction_id=f"youtube-spam.{i}.sig",
        task="youtube-spam",
        verdict=verdict,
        label=label,
        reviewer=reviewer,
        trusted=trusted,
        timestamp=1e6 + i,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A good TF-IDF specialist (600 gold texts) and a weak one (30), from train texts
    that are not the traffic."""
    train = datasets.youtube("train")
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("exam-models")
    out = {}
    for name, n in (("good", 600), ("weak", 30)):
        rows = TRAFFIC + rng.permutation(len(train) - TRAFFIC)[:n]
        data = TrainingSet.from_gold(
            LABELS, [train.texts[i] for i in rows], [train.labels[i] for i in rows]
        )
        out[name] = tfidf.train(data, TrainingSpec(), progress=False).write(
            root / name, task=TASK.name, labels=LABELS, version=name
        )
    return out


def traffic():
    return datasets.youtube("train").subset(range(TRAFFIC))


def served_labels() -> list[str]:
    """What day 0 served each traffic text: its gold label half the time."""
    rng = np.random.default_rng(0)
    flip = {label: LABELS[1 - LABELS.index(label)] for label in LABELS}
    return [label if rng.random() < 0.5 else flip[label] for label in traffic().labels]


@pytest.fixture
def store(tmp_path):
    """Day-0 traffic (youtube train texts, served a wrong label half the time) and the
    owner's gold (youtube test and valid)."""
    s = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    texts, served = traffic().texts, served_labels()
    s.record_many([prediction(i, t, served[i]) for i, t in enumerate(texts)])
    for split in ("test", "valid"):
        gold = datasets.youtube(split)
        s.import_gold(TASK.name, zip(gold.texts, gold.labels), source=f"file:{split}.csv")
    yield s
    s.close()


def exam_now(store: ExampleStore):
    return exam_of(TASK, store, gather(store, TASK), NoFM(), "fm")


def test_500_thumbs_up_from_one_untrusted_key_move_no_gate_decision(store, folders, tmp_path):
    """Untrusted feedback trains (it does enter the gold of the train bucket) but never
    grades: the exam, and so the gate's decision between two fixed models, stays put."""
    before = exam_now(store)
    champion = Champion("1", folders["weak"])
    first = judge(TASK, folders["good"], before, champion)

    served, labels = served_labels(), traffic().labels
    # thumbs-up on wrong answers: a reviewer trying to poison the exam
    wrong = [i for i in range(TRAFFIC) if served[i] != labels[i]]
    ups = [verdict(i, "mallory") for i in wrong] + [verdict(i, "mallory") for i in range(250)]
    ups = (ups * 3)[:500]
    assert len(ups) == 500
    store.record_many(ups)
    assert store.counts(TASK.name)["feedback"] > 100

    examples = gather(store, TASK)
    untrusted = [g for g in examples.gold if g.source.startswith("review:")]
    assert untrusted and not any(g.trusted for g in untrusted)
    assert any(g.split == TRAIN for g in untrusted)  # it trains...
    after = exam_now(store)
    assert (after.texts, after.labels) == (before.texts, before.labels)  # ...but never grades
    second = judge(TASK, folders["good"], after, champion)
    assert second.decision == first.decision
    assert second.decision.passed  # the good model beats the weak one either way

    # The same against a first candidate's trivial answers.
    assert (
        judge(TASK, folders["weak"], after, None).decision
        == judge(TASK, folders["weak"], before, None).decision
    )


def test_agreeing_keys_and_trusted_keys_add_exam_rows_one_key_does_not(store):
    before = len(exam_now(store))
    texts = traffic().texts
    imported = {text for text, _, _ in store.gold_rows(TASK.name)}
    in_exam = [
        i
        for i, text in enumerate(texts)
        if task_split(TASK, text) == EXAM and texts.count(text) == 1 and text not in imported
    ]
    a, b, c = in_exam[:3]
    store.record_many(
        [
            verdict(a, "ann"),
            verdict(a, "ann"),  # the same key again
            verdict(b, "ann"),
            verdict(b, "bob"),  # two keys agree
            verdict(c, "owner", trusted=True),  # a trusted key
        ]
    )
    assert len(exam_now(store)) == before + 2


def test_calibration_and_gate_splits_are_disjoint_and_never_trained_on(store):
    exam = exam_now(store)
    calibration = exam.calibration
    assert len(exam) >= TASK.exam.min_rows and len(calibration) > 0
    assert not set(exam.texts) & set(calibration.texts)
    assert {task_split(TASK, t) for t in exam.texts} == {EXAM}
    assert {task_split(TASK, t) for t in calibration.texts} == {CALIBRATION}
    examples = gather(store, TASK)
    labeled = label_examples(TASK, examples, task_lfs(TASK, ("rule", "python")))
    training = TrainingSet.from_labeled(labeled)
    assert not (set(exam.texts) | set(calibration.texts)) & set(training.texts)


def test_too_small_an_exam_waits_and_names_the_numbers(tmp_path):
    store = ExampleStore(f"sqlite:///{tmp_path / 's.db'}")
    valid = datasets.youtube("valid")
    store.import_gold(TASK.name, zip(valid.texts, valid.labels), source="file:x")
    with pytest.raises(NotReady) as caught:
        exam_now(store)
    n = sum(task_split(TASK, t) == EXAM for t in set(valid.texts))
    assert f"the exam has {n} trusted gold rows (< exam.min_rows = 30" in str(caught.value)
    assert "2 reviewers who agree" in str(caught.value)


def with_fm(exam, rows: int, accuracy: float, seed: int = 0):
    """`exam` with FM answers on the first `rows` calibration texts, right at `accuracy`."""
    from dataclasses import replace

    from protege.improver.judge.exam import FoundationAnswers

    held = exam.calibration
    rng = np.random.default_rng(seed)
    gold = np.array([LABELS.index(label) for label in held.labels[:rows]])
    fm = np.where(rng.random(rows) < accuracy, gold, 1 - gold)
    answers = FoundationAnswers(
        np.eye(2, dtype=np.float32)[fm], np.arange(rows), rows, 0, 0, len(held)
    )
    return replace(exam, calibration=replace(held, foundation=answers))


def test_calibration_runs_on_enough_calibration_rows_and_never_on_a_handful(store, folders):
    task = TASK.model_copy(
        update={"exam": TASK.exam.model_copy(update={"calibration_fraction": 0.3})}
    )
    exam = exam_of(task, store, gather(store, task), NoFM(), "fm")
    assert len(exam.calibration) >= 60, len(exam.calibration)  # ~90
    few = judge(task, folders["good"], with_fm(exam, 10, 0.5), None)
    assert few.calibration is None and few.calibration_rows == 10
    assert any("not calibrated: 10 calibration rows" in n for n in few.notes)
    enough = judge(task, folders["good"], with_fm(exam, 60, 0.5), None)
    assert enough.calibration is not None and enough.calibration_rows == 60
    assert enough.calibration.cascade_accuracy >= 0.5


def test_each_decision_on_the_same_exam_spends_alpha_until_the_exam_is_refreshed(tmp_path):
    store = ExampleStore(f"sqlite:///{tmp_path / 's.db'}")
    texts = [f"exam text {i}" for i in range(40)]
    levels = []
    for k in range(3):
        use = exam_use(store, TASK, texts)
        assert (use.generation, use.decision) == (1, k + 1)
        record_decision(store, TASK, use, texts, version=str(k), passed=False)
        levels.append(use.alpha)
    assert levels[0] > levels[1] > levels[2] and levels[0] < TASK.gate.significance
    grown = texts + [f"new text {i}" for i in range(30)]  # 43 % new: the same generation
    assert exam_use(store, TASK, grown).generation == 1
    refreshed = texts + [f"new text {i}" for i in range(40)]  # half new: a new generation
    use = exam_use(store, TASK, refreshed)
    assert (use.generation, use.decision, use.alpha) == (2, 1, levels[0])
    record_decision(store, TASK, use, refreshed, version="3", passed=True)
    assert exam_use(store, TASK, refreshed).decision == 2
