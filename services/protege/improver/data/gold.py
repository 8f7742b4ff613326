"""Gold data: labels we trust, kept apart from training by a fixed split.

Gold comes from files that a task's owner imports (``protege gold import TASK FILE``,
CSV with ``text`` and ``label`` columns or JSONL with those keys) and from reviewers (a
correction, or a thumbs-up that confirms the served label).

Only *trusted* gold grades models: imported gold, verdicts from API keys with the
``trusted`` role, and texts that ``exam.agreeing_reviewers`` distinct keys gave the same
label. One untrusted reviewer's word still trains; it never grades.

Each text falls in one of three buckets by a hash of its text alone: ``exam`` (trusted
gold there grades candidates), ``calibration`` (trusted gold there calibrates the cascade
threshold) and ``train``. The split never changes as data arrives, the same text is in
the same bucket wherever it appears, and texts of the two held-out buckets are never
trained on, whatever their labels' source: a text that only one reviewer has seen today
may be trusted gold tomorrow.

Example
-------
>>> split_of("Subscribe to my channel!", exam=0.2, calibration=0.1) in SPLITS
True
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from protege.improver.data.records import DataPoint, GoldExample, text_hash
from protege.improver.data.reviews import agreed_label, confirmed, correction, trusted_label
from protege.improver.data.store import ExampleStore
from protege.taskspec import TaskSpec

TRAIN, CALIBRATION, EXAM = "train", "calibration", "exam"
SPLITS = (TRAIN, CALIBRATION, EXAM)


def split_of(text: str, exam: float, calibration: float) -> str:
    """``exam`` for the texts whose hash falls in the first `exam` share, ``calibration``
    for the next `calibration` share, ``train`` for the rest."""
    bucket = int(text_hash(text)[:8], 16) / 0x1_0000_0000
    if bucket < exam:
        return EXAM
    return CALIBRATION if bucket < exam + calibration else TRAIN


def task_split(task: TaskSpec, text: str) -> str:
    """The bucket of `text` under the task's `exam` settings."""
    return split_of(text, task.exam.fraction, task.exam.calibration_fraction)


def read_gold_file(path: Path | str, task: TaskSpec) -> list[tuple[str, str]]:
    """(text, label) pairs from a CSV or JSONL file; an unknown label or a missing
    field is an error that names the line."""
    path = Path(path)
    known = set(task.label_names)
    pairs: list[tuple[str, str]] = []

    def add(line: int, text, label) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{line}: missing text")
        if label not in known:
            raise ValueError(f"{path}:{line}: unknown label {label!r} for task {task.name!r}")
        pairs.append((text, label))

    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if raw.strip():
                record = json.loads(raw)
                add(line, record.get("text"), record.get("label"))
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            column = next(
                (c for c in ("label", "category") if c in (reader.fieldnames or [])), None
            )
            if "text" not in (reader.fieldnames or []) or column is None:
                raise ValueError(f"{path}: needs a 'text' and a 'label' column")
            for line, row in enumerate(reader, start=2):
                add(line, row["text"], row[column])
    else:
        raise ValueError(f"{path}: gold files are .csv, .tsv or .jsonl")
    return pairs


def import_gold_file(store: ExampleStore, task: TaskSpec, path: Path | str) -> dict:
    """Import a gold file (all or nothing); returns counts per split."""
    pairs = read_gold_file(path, task)
    store.import_gold(task.name, pairs, source=f"file:{Path(path).name}")
    splits = [task_split(task, text) for text, _ in pairs]
    return {"imported": len(pairs), **{split: splits.count(split) for split in SPLITS}}


def review_gold(x: DataPoint, agreeing: int) -> tuple[str, str, bool] | None:
    """(label, source, trusted) that the reviews of `x` add up to, if any: a trusted key's
    label, then the label enough distinct reviewers agree on, then one reviewer's word
    (a correction wins over a thumbs-up)."""
    label = trusted_label(x)
    if label is not None:
        return label, "review:trusted", True
    label = agreed_label(x, agreeing)
    if label is not None:
        return label, "review:agreement", True
    label = correction(x)
    if label is not None:
        return label, "review:correction", False
    label = confirmed(x)
    return (label, "review:confirmed", False) if label is not None else None


def gold_examples(
    store: ExampleStore, task: TaskSpec, points: Sequence[DataPoint] | None = None
) -> list[GoldExample]:
    """Every gold label of the task, one per text: an imported label wins over reviews
    (see `review_gold` for their order)."""
    found: dict[str, GoldExample] = {}
    for x in points if points is not None else store.points(task.name):
        gold = review_gold(x, task.exam.agreeing_reviewers)
        if gold is not None and gold[0] in task.label_names:
            label, source, trusted = gold
            found[text_hash(x.text)] = GoldExample(
                x.text, label, source, task_split(task, x.text), trusted
            )
    for text, label, source in store.gold_rows(task.name):
        found[text_hash(text)] = GoldExample(text, label, source, task_split(task, text), True)
    return list(found.values())
