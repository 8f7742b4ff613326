"""The layout is the architecture (ARCHITECTURE.md): each folder one concern, imports
running one way, down the layers. This reads every module's imports and fails on an
arrow that points up or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "services" / "protege"

BOTTOM = {"schemas", "taskspec", "settings", "datasets", "artifact", "stats", "protege"}
# What each unit may import besides itself; a unit is a top-level module or folder of
# protege, or a folder of protege.improver.
ALLOWED = {
    "schemas": set(),
    "taskspec": set(),
    "datasets": set(),
    "stats": set(),  # paired tests: the gate's and the labelers' choice
    "settings": {"taskspec"},
    "artifact": {"schemas"},
    "encoder": {"artifact"},  # the MiniLM sentence encoder: a family's and some LFs'
    "events": {"schemas", "settings"},
    "foundation": {"artifact", "schemas", "settings", "taskspec"},
    "registry": {"artifact", "schemas", "settings"},
    "jobs": {"settings"},  # Protégé's training jobs on Ray's Jobs API: improver and serving
    "serving": BOTTOM | {"events", "foundation", "registry", "jobs"},
    # The improver's folders, bottom to top: data, labeling, training, judge, then the
    # round (loop), its triggers and the service.
    "improver.data": BOTTOM | {"events"},
    "improver.labeling": BOTTOM | {"encoder", "foundation", "improver.data"},
    "improver.training": BOTTOM
    | {"encoder", "foundation", "jobs", "improver.data", "improver.labeling"},
    "improver.judge": BOTTOM
    | {"foundation", "improver.data", "improver.labeling", "improver.training"},
    "improver.triggers": BOTTOM | {"improver.data"},
    "improver.review": BOTTOM | {"improver.data", "improver.labeling"},
    "improver.api": BOTTOM | {"improver.data", "improver.labeling", "improver.review"},
    "improver.loop": BOTTOM
    | {
        "foundation",
        "registry",
        "improver.data",
        "improver.labeling",
        "improver.training",
        "improver.judge",
    },
    "improver.service": BOTTOM
    | {
        "events",
        "registry",
        "improver.data",
        "improver.training",
        "improver.loop",
        "improver.triggers",
        "improver.api",
    },
    "tasks": {"improver.labeling"},  # the shipped tasks' Python labeling functions
    "stack": BOTTOM | {"events", "serving", "jobs"},
    "demo": BOTTOM | {"events", "improver.data", "stack"},
    "commands": None,  # the top: anything
    "cli": None,
}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "protege":
        return None
    if len(parts) == 1:
        return "protege"
    if parts[1] == "improver" and len(parts) > 2:
        return "improver." + parts[2]
    return parts[1]


def imports() -> list[tuple[str, str, str]]:
    """(unit, imported unit, file) for every `from protege... import`."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        source = unit_of(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                target = unit_of(node.module)
                if target and target != source:
                    found.append((source, target, str(path.relative_to(PACKAGE))))
    return found


def test_every_unit_has_a_rule():
    units = {source for source, _, _ in imports()} | {t for _, t, _ in imports()}
    assert units - set(ALLOWED) <= {"protege"}, sorted(units - set(ALLOWED))


@pytest.mark.parametrize("source", sorted(k for k, v in ALLOWED.items() if v is not None))
def test_imports_run_down_the_layers(source):
    wrong = sorted(
        {
            (target, path)
            for s, target, path in imports()
            if s == source and target not in ALLOWED[source]
        }
    )
    assert not wrong, f"{source} must not import {wrong}"


def test_serving_and_improver_never_import_each_other():
    crossing = [
        (s, t, p)
        for s, t, p in imports()
        if (s == "serving" and t.startswith("improver"))
        or (s.startswith("improver") and t == "serving")
    ]
    assert not crossing, crossing


BACKEND_MODULES = {"transformers_backend", "vllm_backend", "openai_backend", "smollm"}


def improver_fm_imports(package: Path = PACKAGE) -> list[tuple[str, str]]:
    """(file, what) for every import under improver/ that could construct an FM backend:
    `create_backend` by name, or a backend module, however it is spelt."""
    found = []
    for path in (package / "improver").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
                names: list[str] = []
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
                names = [alias.name for alias in node.names]
                modules += [f"{node.module}.{n}" for n in names]
            else:
                continue
            for what in modules + names:
                if what == "create_backend" or what.rsplit(".", 1)[-1] in BACKEND_MODULES:
                    found.append((str(path.relative_to(package)), what))
    return found


# The lora family trains the FM itself: it runs only in its training job's process (a
# Ray job, `training/jobs.py`), which loads the model; in the improver's own process
# `train_candidate` refuses it (TrainingNeedsJob, tests/test_training_jobs.py).
TRAINING_JOB_FM = {"improver/training/lora.py"}


def test_no_improver_code_constructs_a_foundation_backend():
    """The improver asks the deployment's FM (foundation/remote.py); on a cluster it runs
    on a CPU pod that could not start the served model anyway."""
    assert [(f, what) for f, what in improver_fm_imports() if f not in TRAINING_JOB_FM] == []


def test_the_check_sees_every_way_of_importing_a_backend(tmp_path):
    spellings = [
        "from protege.foundation.backend import create_backend",
        "from protege.foundation import vllm_backend",
        "import protege.foundation.transformers_backend",
        "from protege.foundation.smollm import MODEL_NAME",
    ]
    (tmp_path / "improver").mkdir()
    for i, line in enumerate(spellings):
        (tmp_path / "improver" / f"m{i}.py").write_text(f"def f():\n    {line}\n")
    (tmp_path / "improver" / "fine.py").write_text("from protege.foundation.remote import x\n")
    flagged = {path for path, _ in improver_fm_imports(tmp_path)}
    assert flagged == {f"improver/m{i}.py" for i in range(len(spellings))}
