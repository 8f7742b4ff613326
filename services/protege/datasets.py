"""The data sets shipped with the package, read the same way everywhere.

- ``youtube-spam``: the YouTube Spam Collection in WRENCH's format, with the votes
  of WRENCH's 10 labeling functions (``weak_labels``, -1 = abstain).
- ``banking77``: BANKING77's 77 customer-support intents.
- ``review-sentiment``: Sentiment Labelled Sentences (UCI), review sentences from
  Amazon, IMDB and Yelp, POSITIVE or NEGATIVE.

Example
-------
>>> from protege import datasets
>>> ds = datasets.load("youtube-spam", "test")
>>> len(ds), ds.label_names, ds.weak_labels.shape
(250, ['HAM', 'SPAM'], (250, 10))
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

YOUTUBE_SPLITS = ("train", "valid", "test")
BANKING77_SPLITS = ("train", "test")
SENTIMENT_SPLITS = ("train", "test")
# The order of WRENCH's youtube weak_labels columns (data/youtube/readme.txt).
YOUTUBE_LF_NAMES = (
    "keyword_my",
    "keyword_subscribe",
    "keyword_link",
    "keyword_please",
    "keyword_song",
    "regex_check_out",
    "short_comment",
    "has_person_nlp",
    "textblob_polarity",
    "textblob_subjectivity",
)


@dataclass(frozen=True)
class Dataset:
    """Texts with their true labels (names), in file order."""

    task: str
    split: str
    texts: list[str]
    labels: list[str]
    label_names: list[str]
    weak_labels: np.ndarray | None = field(default=None, repr=False)  # [N, M] ints, -1 abstain
    weak_label_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def y(self) -> np.ndarray:
        """True labels as indices into `label_names`."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def subset(self, rows: np.ndarray | list[int]) -> Dataset:
        rows = list(np.asarray(rows, dtype=np.int64))
        return Dataset(
            task=self.task,
            split=self.split,
            texts=[self.texts[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            label_names=self.label_names,
            weak_labels=None if self.weak_labels is None else self.weak_labels[rows],
            weak_label_names=self.weak_label_names,
        )


def youtube(split: str = "train", data_dir: Path = DATA_DIR) -> Dataset:
    if split not in YOUTUBE_SPLITS:
        raise ValueError(f"youtube has splits {YOUTUBE_SPLITS}, not {split!r}")
    folder = data_dir / "youtube"
    names = json.loads((folder / "label.json").read_text(encoding="utf-8"))
    label_names = [names[str(i)] for i in range(len(names))]
    records = json.loads((folder / f"{split}.json").read_text(encoding="utf-8")).values()
    records = list(records)
    return Dataset(
        task="youtube-spam",
        split=split,
        # WRENCH keeps the zero-width no-break space that ends most comments; it is noise.
        texts=[r["data"]["text"].replace("\ufeff", "").strip() for r in records],
        labels=[label_names[r["label"]] for r in records],
        label_names=label_names,
        weak_labels=np.array([r["weak_labels"] for r in records], dtype=np.int64),
        weak_label_names=YOUTUBE_LF_NAMES,
    )


def _csv_dataset(
    task: str,
    folder: Path,
    split: str,
    splits: tuple[str, ...],
    labels_file: str,
    label_column: str,
) -> Dataset:
    """A data set kept as `<split>.csv` (columns `text` and `label_column`) with its label
    names, in order, in `labels_file`."""
    if split not in splits:
        raise ValueError(f"{folder.name} has splits {splits}, not {split!r}")
    label_names = json.loads((folder / labels_file).read_text(encoding="utf-8"))
    with open(folder / f"{split}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Dataset(
        task=task,
        split=split,
        texts=[row["text"] for row in rows],
        labels=[row[label_column] for row in rows],
        label_names=list(label_names),
    )


def banking77(split: str = "train", data_dir: Path = DATA_DIR) -> Dataset:
    return _csv_dataset(
        "banking77", data_dir / "banking77", split, BANKING77_SPLITS, "categories.json", "category"
    )


def sentiment_sentences(split: str = "train", data_dir: Path = DATA_DIR) -> Dataset:
    return _csv_dataset(
        "review-sentiment",
        data_dir / "sentiment_sentences",
        split,
        SENTIMENT_SPLITS,
        "labels.json",
        "label",
    )


LOADERS = {
    "youtube-spam": youtube,
    "youtube": youtube,
    "banking77": banking77,
    "review-sentiment": sentiment_sentences,
    "sentiment_sentences": sentiment_sentences,
}


def load(task: str, split: str = "train") -> Dataset:
    """The shipped data set of a task (by task name), one split."""
    try:
        loader = LOADERS[task]
    except KeyError:
        raise ValueError(f"no shipped data set for task {task!r}; have {sorted(LOADERS)}") from None
    return loader(split)


def splits(task: str) -> tuple[str, ...]:
    split_names = {
        youtube: YOUTUBE_SPLITS,
        banking77: BANKING77_SPLITS,
        sentiment_sentences: SENTIMENT_SPLITS,
    }
    return split_names[LOADERS[task]]
