"""The specialist artifact: the one format that training writes and serving reads.

A specialist lives in a folder holding `model.onnx` and `model.json`:

- `model.json`: `{"task", "model", "version", "labels": [...], "threshold": float | null,
  "kind": "onnx" | "fm-adapter", "base_model": str | null}`; `labels` gives the order of
  the output columns, `threshold` the cascade threshold calibrated for this model
  (null: use the task's).
- `model.onnx` takes either raw text (one string input, shape [N] or [N, 1]; e.g. a
  skl2onnx TF-IDF pipeline) or token ids (`input_ids` and `attention_mask`, int64
  [N, T]; a `tokenizer.json` then lies alongside). Its output named
  `probabilities` (else its last float output) is [N, C] class probabilities.

A champion of kind `fm-adapter` is no ONNX graph but a LoRA adapter of the foundation
model (`base_model` names it): PEFT's `adapter_config.json` and
`adapter_model.safetensors` under `adapter/`, scored by the FM deployment with the
task's prompt and label words (safetensors and JSON: still no pickle). Its training job
also answers the texts it was given (the exam's and calibration set's), in
`answers.json`, since the improver runs no FM to score a candidate itself.

Only ONNX and JSON are read and written here: no pickle ever reaches serving.
`SpecialistFiles` is a specialist as bytes (a training job on another machine
returns it); `Specialist` loads a folder and scores texts, for serving and for
the improver's evaluation alike, so that what is measured is what serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protege.schemas import ModelRef

MODEL_FILE = "model.onnx"
META_FILE = "model.json"
TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENS = 128
ONNX_KIND = "onnx"
ADAPTER_KIND = "fm-adapter"
ADAPTER_DIR = "adapter"  # PEFT's save_pretrained output, inside an fm-adapter folder
ANSWERS_FILE = "answers.json"  # an fm-adapter candidate's answers: text key -> probabilities


class SpecialistLoadError(RuntimeError):
    """The folder does not hold a loadable specialist; the message says why."""


@dataclass(frozen=True)
class SpecialistMeta:
    task: str
    model: str
    version: str
    labels: list[str]
    threshold: float | None = None
    kind: str = ONNX_KIND
    base_model: str | None = None  # the FM an fm-adapter plugs into

    @classmethod
    def read(cls, folder: Path) -> SpecialistMeta:
        try:
            raw = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            return cls(
                task=str(raw["task"]),
                model=str(raw["model"]),
                version=str(raw["version"]),
                labels=[str(label) for label in raw["labels"]],
                threshold=None if raw.get("threshold") is None else float(raw["threshold"]),
                kind=str(raw.get("kind", ONNX_KIND)),
                base_model=None if raw.get("base_model") is None else str(raw["base_model"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpecialistLoadError(f"{folder / META_FILE}: {exc}") from exc

    def write(self, folder: Path) -> None:
        (folder / META_FILE).write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")

    @property
    def ref(self) -> ModelRef:
        return ModelRef(model=self.model, version=self.version)


class Specialist:
    """Scores texts with one ONNX model; `predict_proba` is thread-safe (ORT sessions are)."""

    def __init__(self, folder: Path | str, expected_labels: list[str] | None = None):
        folder = Path(folder)
        self.folder = folder
        self.meta = SpecialistMeta.read(folder)
        if expected_labels is not None and sorted(self.meta.labels) != sorted(expected_labels):
            raise SpecialistLoadError(
                f"{folder}: labels {self.meta.labels} do not match the task's {expected_labels}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one request batch per core scales better than threads
        try:
            self.session = ort.InferenceSession(
                str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for corrupt graphs
            raise SpecialistLoadError(f"{folder / MODEL_FILE}: {exc}") from exc
        inputs = self.session.get_inputs()
        self._text_input = inputs[0] if inputs[0].type == "tensor(string)" else None
        self._text_rank = len(inputs[0].shape) if self._text_input else 0
        self._tokenizer = None if self._text_input else self._load_tokenizer(folder)
        self._output = self._probability_output()
        # Reorder columns to the task's label order when the model's differs.
        order = expected_labels or self.meta.labels
        self.labels = list(order)
        self._columns = np.array([self.meta.labels.index(label) for label in order])
        self._check_output_width()

    @staticmethod
    def _load_tokenizer(folder: Path):
        from tokenizers import Tokenizer

        path = folder / TOKENIZER_FILE
        if not path.exists():
            raise SpecialistLoadError(f"{folder}: token-input model without {TOKENIZER_FILE}")
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.enable_padding()
        return tokenizer

    def _probability_output(self) -> str:
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if "probabilities" in names:
            return "probabilities"
        floats = [o.name for o in outputs if o.type == "tensor(float)"]
        if not floats:
            raise SpecialistLoadError(f"{self.folder}: no float output among {names}")
        return floats[-1]

    def _check_output_width(self) -> None:
        probs = self._run(["probe"])
        if probs.shape != (1, len(self.meta.labels)):
            raise SpecialistLoadError(
                f"{self.folder}: output shape {probs.shape} does not match "
                f"{len(self.meta.labels)} labels"
            )

    @property
    def ref(self) -> ModelRef:
        return self.meta.ref

    def _run(self, texts: list[str]) -> np.ndarray:
        if self._text_input is not None:
            array = np.array(texts, dtype=object)
            feed = {self._text_input.name: array.reshape(-1, 1) if self._text_rank == 2 else array}
        else:
            encodings = self._tokenizer.encode_batch(texts)
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            }
        (probs,) = self.session.run([self._output], feed)
        return np.asarray(probs, dtype=np.float32)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """[N, C] probabilities, columns in the task's label order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._run(texts)[:, self._columns]


@dataclass(frozen=True)
class SpecialistFiles:
    """A specialist as bytes: its family name, the ONNX graph (None for an fm-adapter)
    and any files alongside (names may hold a folder: `adapter/adapter_config.json`)."""

    model: str
    onnx: bytes | None
    extra: dict[str, bytes] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)  # what training chose, for the run
    kind: str = ONNX_KIND
    base_model: str | None = None

    def __post_init__(self) -> None:
        if (self.onnx is None) != (self.kind == ADAPTER_KIND):
            raise ValueError(
                f"a {self.kind} specialist {'needs' if self.onnx is None else 'has no'} ONNX graph"
            )

    def write(
        self,
        folder: Path | str,
        *,
        task: str,
        labels: list[str],
        version: str,
        threshold: float | None = None,
    ) -> Path:
        """Write `model.onnx`, `model.json` and the extra files; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.onnx is not None:
            _atomic_write(folder / MODEL_FILE, self.onnx)
        for name, data in self.extra.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / name, data)
        SpecialistMeta(
            task=task,
            model=self.model,
            version=version,
            labels=list(labels),
            threshold=threshold,
            kind=self.kind,
            base_model=self.base_model,
        ).write(folder)
        return folder


def is_adapter(folder: Path | str) -> bool:
    """Whether the folder holds an FM adapter rather than an ONNX specialist."""
    return SpecialistMeta.read(Path(folder)).kind == ADAPTER_KIND


def adapter_name(task: str, version: str) -> str:
    """The name an fm-adapter champion is served under (vLLM's LoRA name, the
    OpenAI-compatible model name, `served_by`): task and registry version."""
    return f"{task}@v{version}"


def parse_adapter_name(name: str) -> tuple[str, str]:
    """(task, version) of an `adapter_name`; ValueError for any other string."""
    task, sep, version = name.rpartition("@v")
    if not sep or not task or not version:
        raise ValueError(f"{name!r} is not an adapter name (TASK@vVERSION)")
    return task, version


def answer_key(text: str) -> str:
    """A text's key in `answers.json`: sha256 of its whitespace-normalized form (the
    example store's text hash)."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def answers_json(labels: list[str], texts: list[str], probabilities: np.ndarray) -> bytes:
    """`answers.json`: the label order and each text's [C] probabilities by its key."""
    answers = {answer_key(t): [float(p) for p in row] for t, row in zip(texts, probabilities)}
    return json.dumps({"labels": list(labels), "answers": answers}).encode("utf-8")


def read_answers(folder: Path | str, texts: list[str], labels: list[str]) -> np.ndarray:
    """[N, C] an fm-adapter's recorded answers on `texts`, columns in `labels` order;
    SpecialistLoadError when the file is missing or lacks some of the texts."""
    path = Path(folder) / ANSWERS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        columns = [raw["labels"].index(label) for label in labels]
        answers = raw["answers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecialistLoadError(f"{path}: {exc}") from exc
    missing = sum(1 for t in texts if answer_key(t) not in answers)
    if missing:
        raise SpecialistLoadError(f"{path}: no answer for {missing} of {len(texts)} texts")
    probs = np.array([answers[answer_key(t)] for t in texts], dtype=np.float32)
    return probs.reshape(len(texts), -1)[:, columns] if texts else probs.reshape(0, len(labels))


def update_meta(folder: Path | str, **changes) -> SpecialistMeta:
    """Rewrite fields of a folder's `model.json` (e.g. `version`, `threshold`)."""
    folder = Path(folder)
    meta = SpecialistMeta.read(folder)
    fields = {**meta.__dict__, **changes}
    updated = SpecialistMeta(**fields)
    updated.write(folder)
    return updated


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
