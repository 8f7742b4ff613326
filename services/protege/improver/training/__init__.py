"""Distill the label model's soft labels (and gold examples) into a specialist.

One module per specialist family, each `train(data, spec, progress) -> SpecialistFiles`:

- `tfidf`: TF-IDF word and char n-grams + logistic regression (skl2onnx);
- `minilm`: all-MiniLM-L6-v2 mean-pooled + a linear head (torch.onnx.export).
- `minilm_ft` (`minilm-ft`): the same, the encoder fine-tuned end to end (LP-FT);
- `minilm_setfit` (`minilm-setfit`): the encoder tuned contrastively on pairs
  (SetFit-style), then the same head.
- `lora`: a LoRA adapter of the foundation model (an fm-adapter, no ONNX), which
  answers the exam and calibration texts in its own job.

`distill.train_specialist` trains the configured families and keeps the better on
validation; `export` turns models into ONNX graphs; `jobs` runs training in-process or
as a Ray job (`job` its entrypoint, `exchange` its input and output).
"""

from protege.improver.training.dataset import TrainingSet, label_indices
from protege.improver.training.distill import (
    FAMILIES,
    Candidate,
    TrainingTiming,
    benchmark_training,
    time_training,
    train_specialist,
)

__all__ = [
    "FAMILIES",
    "Candidate",
    "TrainingSet",
    "TrainingTiming",
    "benchmark_training",
    "label_indices",
    "time_training",
    "train_specialist",
]
