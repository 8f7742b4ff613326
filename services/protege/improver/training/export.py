"""Trained models as ONNX graphs (the specialist artifact's `model.onnx`, see
`protege.artifact`): sklearn pipelines through skl2onnx, torch modules through
`torch.onnx.export`."""

from __future__ import annotations

import io
import warnings

ONNX_OPSET = 17
# onnxruntime's StringNormalizer (lower-casing in the TF-IDF graph) needs a locale that
# exists on the serving host; slim images often lack en_US.UTF-8, every glibc has C.UTF-8.
TFIDF_LOCALE = "C.UTF-8"


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
            module,
            example,
            buffer,
            input_names=["input_ids", "attention_mask"],
            output_names=["probabilities"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "probabilities": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            # The TorchScript exporter needs no onnxscript and handles BERT in ~3 s.
            dynamo=False,
        )
    return buffer.getvalue()
