"""`protege demo` for real, kept short: the broker, the Serve app with the CPU FM and
the improver start, texts are replayed with reviews, Ctrl-C (SIGINT) arrives mid-replay,
and the run folder still gets its summary, chart and logs while every process the run
started is gone. Run as a child process: the demo owns its Ray, which must not meet the
session's serving app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from protege.events.broker import free_port

REPLAY_SECONDS = 15  # of traffic before the interrupt: ~20-40 FM answers on 2 cores


def test_ctrl_c_mid_replay_stops_everything_and_still_writes_the_summary_and_chart(tmp_path):
    folder = tmp_path / "run"
    env = {
        **os.environ,
        "PROTEGE_AUTH_DISABLED": "true",
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "100",
    }
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protege.cli",
            "demo",
            "--limit",
            "400",
            "--review-share",
            "0.5",
            "--exam-gold",  # the owner's evaluation set is replayed first and never queued
            "0",
            "--out",
            str(folder),
            "--port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A suite started as a script's background job ignores SIGINT, and so would the
        # demo it starts (an ignored SIGINT is inherited): the Ctrl-C this test sends
        # needs the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in demo.stdout:  # start-up: broker, Serve app (~30-60 s), improver
            lines.append(line)
            if "replaying" in line:
                break
        time.sleep(REPLAY_SECONDS)
        demo.send_signal(signal.SIGINT)
        output = "".join(lines) + demo.communicate(timeout=120)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, output[-4000:]
    assert "interrupted: stopping everything" in output and str(folder) in output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert 0 < summary["totals"]["requests"] < 400 and summary["errors"] == {}
    assert summary["totals"]["feedback"] > 0
    assert summary["phases"][0]["fm_share"] == 1.0  # day 0: the FM answers everything
    assert (folder / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "logs" / "improver.log").stat().st_size > 0
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
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone in all but name
        return fh.read().split(")")[-1].split()[0] != "Z"
