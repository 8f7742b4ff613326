"""`protege improver run` stopped by SIGTERM mid-round, as Kubernetes stops a pod: a round
that ends within PROTEGE_IMPROVER_STOP_TIMEOUT_S ends as it would have; one that does not is
abandoned, its lease released as `interrupted`, and the process exits within the timeout
+ 10 s. The round is made long by a real mechanism: a task whose Python labeling function
takes its time (as one calling a slow service would)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from protege.improver.data.ledger import RoundLedger
from protege.improver.data.store import ExampleStore
from protege.taskspec import DEFAULT_TASKS_FILE

TASK = "youtube-spam"
SERVICES = Path(__file__).resolve().parents[1] / "services"
SLOW_LF = '''
import os
import time

from protege.improver.labeling import labeling_function


@labeling_function(task="youtube-spam")
def slow_vote(x):
    """Abstains, after SLOW_LF_S seconds."""
    time.sleep(float(os.environ["SLOW_LF_S"]))
    return None
'''


def improver(tmp_path: Path, kafka_settings, *, lf_seconds: float, stop_timeout_s: float):
    """A `protege improver run` whose youtube-spam round (requested before it starts)
    spends 30 x `lf_seconds` labeling; its log goes to tmp_path/improver.log."""
    (tmp_path / "slow_lfs.py").write_text(SLOW_LF)
    shipped = yaml.safe_load(DEFAULT_TASKS_FILE.read_text())
    (task,) = [t for t in shipped["tasks"] if t["name"] == TASK]
    task["labeling"] = {"python_modules": ["slow_lfs"]}  # no rules, no prompts: no FM
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [task]}))
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.import_gold(TASK, [(f"gold comment number {i}", "HAM") for i in range(30)], "test")
    RoundLedger.of(store).request(TASK)
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")}
    env.update(
        PYTHONPATH=f"{SERVICES}{os.pathsep}{tmp_path}",
        SLOW_LF_S=str(lf_seconds),
        HF_HUB_OFFLINE="1",
        PROTEGE_HOME=str(tmp_path),
        PROTEGE_TASKS_FILE=str(tmp_path / "tasks.yaml"),
        PROTEGE_IMPROVER_STOP_TIMEOUT_S=str(stop_timeout_s),
        PROTEGE_IMPROVER_RAY="never",
        PROTEGE_KAFKA_BOOTSTRAP=kafka_settings.kafka_bootstrap,
        PROTEGE_KAFKA_TOPIC_PREDICTIONS=kafka_settings.kafka_topic_predictions,
        PROTEGE_KAFKA_TOPIC_FEEDBACK=kafka_settings.kafka_topic_feedback,
        PROTEGE_KAFKA_TOPIC_MODELS=kafka_settings.kafka_topic_models,
        PROTEGE_KAFKA_SESSION_TIMEOUT_MS="1000",
    )
    log = open(tmp_path / "improver.log", "w")  # noqa: SIM115 - the child writes it
    process = subprocess.Popen(
        [sys.executable, "-m", "protege.cli", "improver", "run"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    return process, tmp_path / "improver.log"


def wait_for_line(process, log: Path, text: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def terminate(process) -> float:
    """SIGTERM, as the kubelet sends; seconds until the process exited (rc 0)."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0
    return time.monotonic() - sent


def ledger(tmp_path: Path):
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        return RoundLedger.of(store).state(TASK)
    finally:
        store.close()


def test_a_round_outliving_the_stop_timeout_is_abandoned_and_its_lease_freed(
    tmp_path, kafka_settings
):
    stop_timeout_s = 2.0
    process, log = improver(tmp_path, kafka_settings, lf_seconds=2.0, stop_timeout_s=stop_timeout_s)
    wait_for_line(process, log, f"{TASK}: round started")
    time.sleep(1.0)
    assert ledger(tmp_path).holder is not None  # labeling: 60 s to go
    seconds = terminate(process)
    assert stop_timeout_s <= seconds < stop_timeout_s + 10, seconds
    state = ledger(tmp_path)
    assert state.holder is None and state.lease_until is None
    assert state.outcome == "interrupted", state
    assert "abandoned after 2 s" in state.detail
    assert f"{TASK}: round abandoned" in log.read_text()
    # The lease is free: the next round (another replica, or this one restarted) starts now.
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    assert RoundLedger.of(store).acquire(TASK, "next", lease_s=60, feedback=0, events=0)


def test_a_round_ending_within_the_stop_timeout_ends_as_it_would_have(tmp_path, kafka_settings):
    process, log = improver(tmp_path, kafka_settings, lf_seconds=0.2, stop_timeout_s=60.0)
    wait_for_line(process, log, f"{TASK}: round started")
    seconds = terminate(process)
    assert 3 < seconds < 60, seconds  # it waited for the round's 6 s of labeling
    state = ledger(tmp_path)
    assert state.holder is None
    # 30 gold examples hold fewer than retrain.min_holdout_gold held out: skipped, not cut.
    assert state.outcome == "skipped", state
    assert "round abandoned" not in log.read_text()
