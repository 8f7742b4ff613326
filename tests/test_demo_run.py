"""`protege demo` for real, kept short: the broker, the Serve app with the CPU FM and
the improver start, a few texts are replayed with reviews, and the run folder gets
its summary, chart and logs; then every process it started is gone. Run as a child
process: the demo owns its Ray, which must not meet the session's serving app."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from protege.commands.demo import NO_PROMOTION
from protege.events.broker import free_port


def test_a_short_demo_run_writes_its_summary_and_chart_and_stops_everything(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PROTEGE_AUTH_DISABLED": "true", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", "demo", "--limit", "24", "--review-share", "0.5",
         "--out", str(folder), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode in (0, NO_PROMOTION), output[-4000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["totals"]["requests"] == 24, summary
    assert summary["errors"] == {} and summary["totals"]["feedback"] > 0
    assert summary["phases"][0]["fm_share"] == 1.0  # day 0: the FM answers everything
    assert (folder / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert "run folder:" in output and str(folder) in output
    assert (folder / "logs" / "improver.log").exists()
    # Nothing this run started outlives it.
    assert set(summary["processes"]) == {"broker", "improver"}
    for name, pid in summary["processes"].items():
        assert not alive(pid), f"{name} (pid {pid}) outlived the demo"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{summary['url']}/healthz", timeout=2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone in all but name.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"
