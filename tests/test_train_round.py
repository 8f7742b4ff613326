"""A round's last steps on given data (train -> judge: evaluate, calibrate, gate ->
decide: register, promote or reject); training as a Ray job is test_training_jobs's."""

from __future__ import annotations

import numpy as np
import pytest

from protege import datasets
from protege.artifact import Specialist
from protege.improver.judge.exam import Exam, FoundationAnswers
from protege.improver.judge.judgement import judge
from protege.improver.loop import decide, fetch_champion
from protege.improver.training import TrainingSet, train_specialist
from protege.registry import CHAMPION, Registry
from protege.schemas import ModelAction
from protege.taskspec import DEFAULT_TASKS_FILE, GateSpec, TrainingSpec, load_tasks

LABELS = ["HAM", "SPAM"]


@pytest.fixture(scope="module")
def task():
    spec = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    return spec.model_copy(
        update={
            "training": TrainingSpec(families=["tfidf"]),
            "gate": GateSpec(min_accuracy=0.8),
        }
    )


@pytest.fixture(scope="module")
def youtube():
    """youtube with 800 of its 1,586 train texts, to keep the rounds quick."""
    splits = {split: datasets.youtube(split) for split in ("train", "valid", "test")}
    splits["train"] = splits["train"].subset(np.random.default_rng(0).permutation(1586)[:800])
    return splits


def weak_plus_gold(train, gold_share=0.2, seed=0, shuffle=False) -> TrainingSet:
    rng = np.random.default_rng(seed)
    votes = np.stack([(train.weak_labels == c).sum(1) for c in range(2)], 1).astype(float)
    gold_rows = np.flatnonzero(rng.random(len(train)) < gold_share)
    gold_labels = [train.labels[i] for i in gold_rows]
    if shuffle:
        votes = rng.permutation(votes)
        gold_labels = list(rng.permutation(gold_labels))
    return TrainingSet.build(
        LABELS,
        soft_texts=train.texts,
        soft_probs=votes,
        gold_texts=[train.texts[i] for i in gold_rows],
        gold_labels=gold_labels,
    )


def held_out(texts, labels, fm) -> Exam:
    n = len(texts)
    answers = (
        FoundationAnswers(np.eye(2, dtype=np.float32)[fm], np.arange(n), 0, 0, n, n)
        if fm is not None
        else FoundationAnswers(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), 0, 0, 0, n)
    )
    return Exam(list(texts), list(labels), answers)


def exam_of(test, fm=None, calibration_rows=100) -> Exam:
    """The test split as the exam, its last `calibration_rows` as the calibration set
    (with the FM's label indices `fm` on every row, when given)."""
    cut = len(test) - calibration_rows
    part = (lambda a, b: None) if fm is None else (lambda a, b: fm[a:b])
    exam = held_out(test.texts[:cut], test.labels[:cut], part(0, cut))
    calibration = held_out(test.texts[cut:], test.labels[cut:], part(cut, len(test)))
    return Exam(exam.texts, exam.labels, exam.foundation, calibration)


def judge_and_decide(
    task, train: TrainingSet, test, registry, tmp_path, *, fm=None, validation=None, publish=None
):
    """Train on `train`, judge on `test` (with the FM's label indices `fm`), decide."""
    candidate = train_specialist(task.name, train, task.training, validation, progress=False)
    folder = candidate.write(tmp_path / f"candidate-{len(list(tmp_path.iterdir()))}")
    judgement = judge(task, folder, exam_of(test, fm), fetch_champion(registry, task))
    version, event = decide(
        task,
        candidate,
        folder,
        judgement,
        registry,
        lf_report={"lfs": 10},
        label_model={"name": "majority"},
        publish=publish,
    )
    return judgement, version, event


def test_a_good_round_is_promoted_and_a_shuffled_one_rejected(task, youtube, tmp_path):
    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), tmp_path / "cache"
    )
    test = youtube["test"]
    rng = np.random.default_rng(0)
    fm = np.where(rng.random(len(test)) < 0.75, test.y, 1 - test.y)  # a 75 % FM
    events = []
    valid = (youtube["valid"].texts, youtube["valid"].labels)

    first, first_version, first_event = judge_and_decide(
        task,
        weak_plus_gold(youtube["train"]),
        test,
        registry,
        tmp_path,
        fm=fm,
        validation=valid,
        publish=events.append,
    )
    print(f"\n{first.table()}\ncascade: {first.calibration}")
    assert first.decision.passed and first_event.action == ModelAction.promoted
    assert registry.alias_version(task.name, CHAMPION) == first_version
    served = Specialist(registry.download(task.name), LABELS)
    assert served.meta.version == first_version
    assert served.meta.threshold == pytest.approx(first.calibration.threshold)
    assert first.calibration.met and first.calibration.cascade_accuracy >= 0.75 - 0.05
    assert first.candidate.metrics.accuracy >= 0.88
    assert {c.rival for c in first.decision.comparisons} == {"majority", "foundation"}
    assert first.calibration_rows == 100 and first.exam_rows == len(test) - 100

    second, second_version, second_event = judge_and_decide(
        task,
        weak_plus_gold(youtube["train"], shuffle=True),
        test,
        registry,
        tmp_path,
        fm=fm,
        validation=valid,
        publish=events.append,
    )
    assert not second.decision.passed
    assert second_event.action == ModelAction.rejected and second_event.reasons
    assert second.champion_version == first_version
    assert registry.alias_version(task.name, CHAMPION) == first_version  # still serving
    assert [e.action for e in events] == [ModelAction.promoted, ModelAction.rejected]
    assert {i.version: i.status for i in registry.list(task.name)} == {
        first_version: "promoted",
        second_version: "rejected",
    }


def test_a_champion_that_cannot_load_does_not_block_a_good_candidate(task, youtube, tmp_path):
    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), tmp_path / "cache"
    )
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"not an onnx graph")
    (corrupt / "model.json").write_text(
        '{"task": "youtube-spam", "model": "tfidf-lr", "version": "x", '
        '"labels": ["HAM", "SPAM"], "threshold": null}'
    )
    registry.promote(task.name, registry.log_candidate(task.name, corrupt))
    train = youtube["train"].subset(range(300))
    test = youtube["test"]
    judgement, _, event = judge_and_decide(
        task, TrainingSet.from_gold(LABELS, train.texts, train.labels), test, registry, tmp_path
    )
    assert event.action == ModelAction.promoted
    assert judgement.metrics["champion"] is None
    assert any("cannot be evaluated" in r for r in event.reasons)
    assert [c.rival for c in judgement.decision.comparisons] == ["majority"]  # as a first one
    assert judgement.calibration is None  # no FM answers: the task's threshold stays
    assert any("not calibrated: 0 calibration rows" in r for r in event.reasons)


def test_the_family_is_chosen_on_the_calibration_buckets_trusted_gold(task):
    from protege.improver.data.examples import Examples
    from protege.improver.data.gold import CALIBRATION, EXAM
    from protege.improver.data.records import GoldExample
    from protege.improver.loop import MIN_FAMILY_VALIDATION_ROWS, family_validation

    def gold(n: int, split: str, trusted: bool = True) -> list[GoldExample]:
        return [
            GoldExample(f"text {split} {k}", LABELS[k % 2], "file:owner.csv", split, trusted)
            for k in range(n)
        ]

    enough = MIN_FAMILY_VALIDATION_ROWS
    texts, labels = family_validation(
        task, Examples([], gold(enough, CALIBRATION) + gold(99, EXAM) + gold(9, CALIBRATION, False))
    )
    assert len(texts) == enough and set(labels) == set(LABELS)  # neither exam nor untrusted
    assert family_validation(task, Examples([], gold(enough - 1, CALIBRATION))) is None
