"""What a training job reads and writes: JSON and npz only (no pickle), so that a job's
folder can come from and go to any storage without being trusted as code.

The input (the job's working_dir): `input.json` (task, labels, texts, the TaskSpec's
`training`, train_specialist's keyword arguments, where to put the result) and
`arrays.npz` (the TrainingSet's targets, weights, gold mask).

The output (a Candidate): `candidate.json` (its fields but `files`; of `files`, the
JSON-able fields) and the bytes of `files` beside it: a `bytes` field as a file of the
field's name, a `dict[str, bytes]` field as a folder of that name. Both are generic over
the dataclasses' fields, so a field added to `SpecialistFiles` travels too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

import numpy as np

from protege.artifact import SpecialistFiles
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.distill import Candidate
from protege.taskspec import TrainingSpec

INPUT, ARRAYS, CANDIDATE = "input.json", "arrays.npz", "candidate.json"


class ExchangeError(ValueError):
    """A job's input or output folder is not what this module writes."""


def plain(value):
    """`json.dumps`'s default: NumPy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} cannot go to a training job (JSON only)")


@dataclass(frozen=True)
class JobInput:
    task: str
    train: TrainingSet
    spec: TrainingSpec
    kwargs: dict  # train_specialist's keyword arguments (validation, ...)
    output: str  # where the candidate goes (a folder or an MLflow artifact URI)


def write_input(folder: Path, job: JobInput) -> Path:
    """Write the job's input into `folder` (to be its working_dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    head = {
        "task": job.task,
        "labels": list(job.train.labels),
        "texts": list(job.train.texts),
        "training": job.spec.model_dump(mode="json"),
        "kwargs": job.kwargs,
        "output": job.output,
    }
    (folder / INPUT).write_text(json.dumps(head, default=plain), encoding="utf-8")
    np.savez(
        folder / ARRAYS,
        targets=job.train.targets,
        weights=job.train.weights,
        gold=job.train.gold,
    )
    return folder


def read_input(folder: Path) -> JobInput:
    try:
        head = json.loads((folder / INPUT).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS, allow_pickle=False) as arrays:
            train = TrainingSet(
                list(head["labels"]),
                [str(t) for t in head["texts"]],
                arrays["targets"],
                arrays["weights"],
                arrays["gold"],
            )
        return JobInput(
            str(head["task"]),
            train,
            TrainingSpec.model_validate(head["training"]),
            dict(head["kwargs"]),
            str(head["output"]),
        )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ExchangeError(f"{folder}: not a training job's input: {exc}") from exc


def _safe(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ExchangeError(f"unsafe file name {name!r}")
    return path


def write_candidate(candidate: Candidate, folder: Path) -> Path:
    """Write `candidate` into `folder` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict = {"json": {}, "bytes": [], "folders": {}}
    for f in fields(candidate.files):
        value = getattr(candidate.files, f.name)
        if isinstance(value, bytes):
            (folder / f.name).write_bytes(value)
            files["bytes"].append(f.name)
        elif (
            isinstance(value, dict) and value and all(isinstance(v, bytes) for v in value.values())
        ):
            for name, data in value.items():
                path = folder / f.name / _safe(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            files["folders"][f.name] = sorted(value)
        else:
            files["json"][f.name] = value
    head = {f.name: getattr(candidate, f.name) for f in fields(candidate) if f.name != "files"}
    head["files"] = files
    (folder / CANDIDATE).write_text(json.dumps(head, default=plain), encoding="utf-8")
    return folder


def read_candidate(folder: Path) -> Candidate:
    try:
        head = json.loads((folder / CANDIDATE).read_text(encoding="utf-8"))
        files = head.pop("files")
        values = dict(files["json"])
        values.update({name: (folder / _safe(name)).read_bytes() for name in files["bytes"]})
        for field, names in files["folders"].items():
            values[field] = {n: (folder / _safe(field) / _safe(n)).read_bytes() for n in names}
        return Candidate(**head, files=SpecialistFiles(**values))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ExchangeError(f"{folder}: not a training job's candidate: {exc}") from exc


def upload(folder: Path, uri: str) -> None:
    """Copy `folder`'s files to `uri` through MLflow's artifact stores (local, s3, ...)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(uri).log_artifacts(str(folder))


def download(uri: str, folder: Path) -> Path:
    """The files at `uri` in `folder` (the improver's side of `upload`)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return Path(get_artifact_repository(uri).download_artifacts("", str(folder)))
