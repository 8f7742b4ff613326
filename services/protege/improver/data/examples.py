"""Gather a task's examples from the store: one data point per distinct text of its
traffic, plus the gold texts its owner imported that traffic never carried, and
every gold label, trusted or not (see `protege.improver.data.gold`)."""

from __future__ import annotations

from dataclasses import dataclass

from protege.improver.data.gold import CALIBRATION, EXAM, gold_examples
from protege.improver.data.records import DataPoint, GoldExample, text_hash
from protege.improver.data.store import ExampleStore
from protege.taskspec import TaskSpec


@dataclass(frozen=True)
class Examples:
    points: list[DataPoint]
    gold: list[GoldExample]

    def exam_gold(self) -> list[GoldExample]:
        """The exam: trusted gold in the exam bucket, never trained on."""
        return [g for g in self.gold if g.split == EXAM and g.trusted]

    def calibration_gold(self) -> list[GoldExample]:
        """Trusted gold in the calibration bucket: the cascade threshold's data."""
        return [g for g in self.gold if g.split == CALIBRATION and g.trusted]


def gather(store: ExampleStore, task: TaskSpec) -> Examples:
    """The task's newest traffic (`retrain.window` predictions) and its gold, from the store."""
    points = store.points(task.name, limit=task.retrain.window)
    gold = gold_examples(store, task, points)
    seen = {text_hash(x.text) for x in points}
    points += [
        DataPoint(g.text, uid=f"gold:{text_hash(g.text)[:12]}")
        for g in gold
        if text_hash(g.text) not in seen
    ]
    return Examples(points, gold)
