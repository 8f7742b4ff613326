"""Static checks of Protégé's two images, for machines without a Docker engine (CI).

What `docker build` would find out late, found out now:

- every COPY/ADD source exists in the build context (the repository root);
- both images start from the same Ray and Python, the Ray the chart declares
  (helm/protege/values.yaml rayCluster.rayVersion) and the GPU constraints pin;
- the CPU image installs the torch that pyproject pins, the GPU image the torch, vLLM and
  transformers of deploy/gpu-constraints.txt, and the two transformers ranges can both be met;
- the GPU torch's CUDA and the NVIDIA driver branch it needs are known here and stated in
  deploy/Dockerfile.gpu and deploy/KUBERNETES.md (a torch bump without its driver note fails);
- hadolint-style rules: pinned base images, pip without a cache, a non-root final USER, no
  remote ADD; and hadolint itself when it is on PATH.

Run: python deploy/check_images.py [--root DIR]; exit status 1 lists every problem.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

DOCKERFILES = ("deploy/Dockerfile.cpu", "deploy/Dockerfile.gpu")
CONSTRAINTS = "deploy/gpu-constraints.txt"
# torch minor -> (CUDA of its default Linux wheels, oldest NVIDIA driver branch for that CUDA).
TORCH_CUDA = {
    "2.13": ("12.9", "R575"),
    "2.14": ("13.0", "R580"),
}
FROM_RE = re.compile(
    r"^FROM\s+rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)(?P<gpu>-gpu)?\s*$"
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buffer = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        word, _, rest = buffer.partition(" ")
        out.append((word.upper(), rest.strip()))
        buffer = ""
    return out


def pins(requirements: list[str]) -> dict[str, str]:
    """{name: specifier} of requirement strings ("torch==2.13.0" -> {"torch": "==2.13.0"})."""
    found = {}
    for req in requirements:
        req = req.split("#")[0].strip()
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", req)
        if match and req:
            found[match.group(1).lower()] = match.group(3).replace(" ", "")
    return found


def check(root: Path) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    values = (root / "helm/protege/values.yaml").read_text()
    chart_ray = re.search(r'^\s+rayVersion:\s*"?([\d.]+)"?', values, re.M)
    chart_ray = chart_ray.group(1) if chart_ray else None
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project = pins(pyproject["project"]["dependencies"])
    gpu_extra = pins(pyproject["project"]["optional-dependencies"].get("gpu", []))
    constraints = pins((root / CONSTRAINTS).read_text().splitlines())

    bases = {}
    for name in DOCKERFILES:
        path = root / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        text = path.read_text()
        steps = instructions(text)
        froms = [args for word, args in steps if word == "FROM"]
        if len(froms) != 1 or not FROM_RE.match("FROM " + froms[0]):
            problems.append(
                f"{name}: expected one FROM rayproject/ray:<x.y.z>-py<NN>[-gpu], got {froms}"
            )
        else:
            match = FROM_RE.match("FROM " + froms[0])
            bases[name] = match.groupdict()
            if (match.group("gpu") is not None) != name.endswith(".gpu"):
                problems.append(f"{name}: base image {froms[0]} is the wrong flavour (-gpu)")
        for word, args in steps:
            if word in ("COPY", "ADD"):
                parts = [p for p in shlex.split(args) if not p.startswith("--")]
                for source in parts[:-1]:
                    if re.match(r"^https?://", source):
                        problems.append(
                            f"{name}: {word} {source}: remote ADD (use curl with a checksum)"
                        )
                    elif not list(root.glob(source)):
                        problems.append(f"{name}: {word} {source}: not in the build context")
            if (
                word == "RUN"
                and re.search(r"\bpip install\b", args)
                and "PIP_NO_CACHE_DIR" not in text
                and "--no-cache-dir" not in args
            ):
                problems.append(f"{name}: pip install without --no-cache-dir (or PIP_NO_CACHE_DIR)")
        users = [args for word, args in steps if word == "USER"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{name}: the final USER must not be root")
        if re.search(r"^FROM\s+\S+:latest\b", text, re.M):
            problems.append(f"{name}: a :latest base image")

        if name.endswith(".cpu"):
            torch_cpu = re.search(r"pip install torch==([\d.]+)", text)
            if not torch_cpu:
                problems.append(f"{name}: does not install a pinned torch first")
            elif f"=={torch_cpu.group(1)}" != project.get("torch"):
                problems.append(
                    f"{name}: torch=={torch_cpu.group(1)} but pyproject pins torch{project.get('torch')}"
                )
        else:
            if f"--override {CONSTRAINTS}" not in text:
                problems.append(f"{name}: does not apply {CONSTRAINTS} with uv's --override")
            torch_gpu = (constraints.get("torch") or "").removeprefix("==")
            minor = ".".join(torch_gpu.split(".")[:2])
            if minor not in TORCH_CUDA:
                problems.append(
                    f"{CONSTRAINTS}: torch {torch_gpu or '?'}: add its CUDA and driver branch "
                    f"to TORCH_CUDA in deploy/check_images.py and to the docs"
                )
            else:
                cuda, driver = TORCH_CUDA[minor]
                notes.append(
                    f"GPU image: torch {torch_gpu} (CUDA {cuda}) needs an NVIDIA driver {driver}+"
                )
                for doc in (name, "deploy/KUBERNETES.md"):
                    if driver not in (root / doc).read_text():
                        problems.append(
                            f"{doc}: does not state the GPU image's driver requirement ({driver})"
                        )

    if len(bases) == 2:
        cpu, gpu = (bases[n] for n in DOCKERFILES)
        if (cpu["ray"], cpu["py"]) != (gpu["ray"], gpu["py"]):
            problems.append(
                f"the images differ in Ray or Python: {cpu} vs {gpu} (one Ray cluster needs both equal)"
            )
        if chart_ray and cpu["ray"] != chart_ray:
            problems.append(
                f"the images run Ray {cpu['ray']}, the chart declares rayVersion {chart_ray}"
            )
        want_py = f"{cpu['py'][0]}.{cpu['py'][1:]}"
        try:
            from packaging.specifiers import SpecifierSet

            if want_py not in SpecifierSet(pyproject["project"]["requires-python"]):
                problems.append(
                    f"pyproject requires-python does not admit the images' Python {want_py}"
                )
        except ImportError:  # pragma: no cover
            pass
        if constraints.get("ray") != f"=={cpu['ray']}":
            problems.append(
                f"{CONSTRAINTS}: ray{constraints.get('ray')} but the images run Ray {cpu['ray']}"
            )
        if project.get("ray") != f"=={cpu['ray']}":
            problems.append(
                f"pyproject: ray{project.get('ray')} but the images run Ray {cpu['ray']}"
            )

    problems += ranges_meet(constraints, project, gpu_extra, notes)
    return problems, notes


def ranges_meet(constraints: dict, project: dict, gpu_extra: dict, notes: list[str]) -> list[str]:
    """The GPU constraints replace pyproject's pins (uv --override): each must still meet the
    lower bounds pyproject asks for, or the GPU image runs code against an API it never had."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # pragma: no cover - packaging ships with pip's vendored copy elsewhere
        notes.append("packaging is not installed: version ranges not compared")
        return []
    problems = []
    if "vllm" in gpu_extra and "vllm" in constraints:
        pinned = Version(constraints["vllm"].removeprefix("=="))
        if pinned not in SpecifierSet(gpu_extra["vllm"]):
            problems.append(
                f"{CONSTRAINTS}: vllm {pinned} does not meet pyproject's gpu extra vllm{gpu_extra['vllm']}"
            )
    for name in ("transformers", "fastapi"):
        if name in constraints and name in project:
            both = SpecifierSet(constraints[name]) & SpecifierSet(project[name])
            lows = [Version(s.version) for s in both if s.operator in (">=", "==")]
            if lows and not any(Version(str(v)) in both for v in lows):
                problems.append(
                    f"{name}: {CONSTRAINTS} ({constraints[name]}) and pyproject "
                    f"({project[name]}) cannot both hold"
                )
            notes.append(
                f"{name}: CPU image {project[name]}, GPU image {project[name]},{constraints[name]}"
            )
    notes.append(f"torch: CPU image {project.get('torch')}, GPU image {constraints.get('torch')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    problems, notes = check(args.root)
    for note in notes:
        print(f"ok: {note}")
    hadolint = shutil.which("hadolint")
    if hadolint:
        for name in DOCKERFILES:
            result = subprocess.run(
                [hadolint, str(args.root / name)], capture_output=True, text=True
            )
            if result.returncode:
                problems.append(f"hadolint {name}:\n{result.stdout}{result.stderr}")
    else:
        print("note: hadolint not on PATH; its own rules were not run")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
