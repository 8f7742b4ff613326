"""Gold data: labels we trust, kept apart from training by a fixed split.

Gold comes from reviewers (a correction, or a thumbs-up that confirms the served
label) and from files that a task's owner imports (``protege gold import TASK FILE``,
CSV with ``text`` and ``label`` columns or JSONL with those keys). Each gold text falls
in ``train`` or ``holdout`` by a hash of its text alone: the split never changes as
data arrives, the same text is in the same split wherever it appears, and holdout
texts are never trained on (the gate evaluates on them).

Example
-------
>>> split_of("Subscribe to my channel!", holdout_fraction=0.2) in ("train", "holdout")
True
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from protege.improver.data.records import DataPoint, GoldExample, text_hash
from protege.improver.data.reviews import confirmed, correction
from protege.improver.data.store import ExampleStore
from protege.taskspec import TaskSpec

TRAIN, HOLDOUT = "train", "holdout"


def split_of(text: str, holdout_fraction: float) -> str:
    """``holdout`` for a fixed share of texts, chosen by their hash; ``train`` otherwise."""
    bucket = int(text_hash(text)[:8], 16) / 0x1_0000_0000
    return HOLDOUT if bucket < holdout_fraction else TRAIN


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
    fraction = task.labeling.holdout_fraction
    splits = [split_of(text, fraction) for text, _ in pairs]
    return {"imported": len(pairs), TRAIN: splits.count(TRAIN), HOLDOUT: splits.count(HOLDOUT)}


def gold_examples(
    store: ExampleStore, task: TaskSpec, points: Sequence[DataPoint] | None = None
) -> list[GoldExample]:
    """Every gold label of the task, one per text: an imported label wins over a
    reviewer's; among reviewers a correction wins over a thumbs-up."""
    fraction = task.labeling.holdout_fraction
    found: dict[str, GoldExample] = {}
    for x in points if points is not None else store.points(task.name):
        label, source = correction(x), "review:correction"
        if label is None:
            label, source = confirmed(x), "review:confirmed"
        if label is not None and label in task.label_names:
            found[text_hash(x.text)] = GoldExample(
                x.text, label, source, split_of(x.text, fraction)
            )
    for text, label, source in store.gold_rows(task.name):
        found[text_hash(text)] = GoldExample(text, label, source, split_of(text, fraction))
    return list(found.values())
