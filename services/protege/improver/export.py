"""From a trained model to the folder that serving loads (see `protege.serving.specialist`).

A specialist travels as bytes (`SpecialistFiles`): a Ray task on a GPU worker
returns it to the improver, which writes the folder locally. Only ONNX and JSON
are written: serving never unpickles anything.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from protege.serving.specialist import (
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    SpecialistMeta,
)

ONNX_OPSET = 17
# onnxruntime's StringNormalizer (lower-casing in the TF-IDF graph) needs a locale that
# exists on the serving host; slim images often lack en_US.UTF-8, every glibc has C.UTF-8.
TFIDF_LOCALE = "C.UTF-8"


@dataclass(frozen=True)
class SpecialistFiles:
    """A specialist as bytes: its family name, the ONNX graph and any files alongside."""

    model: str
    onnx: bytes
    extra: dict[str, bytes] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)  # what training chose, for the run

    def write(
        self, folder: Path | str, *, task: str, labels: list[str], version: str,
        threshold: float | None = None,
    ) -> Path:
        """Write `model.onnx`, `model.json` and the extra files; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / MODEL_FILE, self.onnx)
        for name, data in self.extra.items():
            _atomic_write(folder / name, data)
        SpecialistMeta(task=task, model=self.model, version=version, labels=list(labels),
                       threshold=threshold).write(folder)
        return folder

    @property
    def size_bytes(self) -> int:
        return len(self.onnx) + sum(len(v) for v in self.extra.values())


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


def tfidf_to_onnx(pipeline) -> bytes:
    """A fitted TF-IDF + linear sklearn pipeline as ONNX: string input `text` [N, 1],
    output `probabilities` [N, C] (ZipMap off)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer

    clf = pipeline.steps[-1][1]
    with warnings.catch_warnings():
        # "only tokenizer='word' is fully supported": char n-grams convert fine (tested
        # against sklearn in tests/test_train_tfidf.py); char_wb is what does not.
        warnings.filterwarnings("ignore", message="The conversion of CountVectorizer")
        model = convert_sklearn(
            pipeline,
            initial_types=[("text", StringTensorType([None, 1]))],
            options={type(clf): {"zipmap": False}, TfidfVectorizer: {"locale": TFIDF_LOCALE}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
    outputs = [o.name for o in model.graph.output]
    if "probabilities" not in outputs:
        raise RuntimeError(f"skl2onnx produced outputs {outputs}, expected 'probabilities'")
    return model.SerializeToString()


def torch_to_onnx(module, vocab_size: int) -> bytes:
    """A torch module `(input_ids, attention_mask) -> probabilities` as one ONNX graph
    with dynamic batch and sequence axes."""
    import torch

    module = module.cpu().eval()
    example = (torch.randint(1, vocab_size, (2, 8)), torch.ones(2, 8, dtype=torch.long))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing notes that python-side branches of the attention code are frozen; they
        # depend on neither batch size nor length (tests compare padded and single runs).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            module, example, buffer,
            input_names=["input_ids", "attention_mask"], output_names=["probabilities"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"},
                          "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
            # The TorchScript exporter needs no onnxscript and handles BERT in ~3 s.
            dynamo=False,
        )
    return buffer.getvalue()


__all__ = [
    "META_FILE", "MODEL_FILE", "TOKENIZER_FILE", "SpecialistFiles", "tfidf_to_onnx",
    "torch_to_onnx", "update_meta",
]
