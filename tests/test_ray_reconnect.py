"""The improver's training survives a Ray cluster switch-over, as a RayService upgrade
does one: the cluster behind RAY_ADDRESS (a Ray Client address, the head service) is
deleted and a new one answers at the same address; the next training connects to it.

Two real single-node Ray clusters (`ray start --head`) in turn on one Ray Client port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from protege import datasets
from protege.events.broker import free_port
from protege.improver.training import TrainingSet
from protege.improver.training.jobs import train_candidate
from protege.taskspec import DEFAULT_TASKS_FILE, TrainingSpec, load_tasks

RAY = str(Path(sys.executable).with_name("ray"))
PORTS = (
    "port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


class Cluster:
    """`ray start --head --block` in a process group of its own, Ray Client on `client_port`;
    `delete()` kills every process of it at once, as deleting its pods would."""

    def __init__(self, client_port: int):
        # Short: Ray's unix sockets live under it (108 characters at most).
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        args = [RAY, "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=false"]
        args += ["--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        args += [f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={client_port}"]
        args += [f"--{name}={free_port()}" for name in PORTS]
        # gRPC's fork handlers crash Ray Client's proxy now and then when it forks its
        # per-client server on a loaded machine; the proxy needs none of them.
        env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.log = Path(self.temp_dir) / "start.log"
        self.process = subprocess.Popen(
            args,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", client_port), timeout=1).close()
                break
            except OSError:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.5)

    def delete(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_client_address(monkeypatch):
    import ray

    assert not ray.is_initialized()
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    monkeypatch.setenv("RAY_CLIENT_RECONNECT_GRACE_PERIOD", "1")  # a lost cluster fails fast
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    yield port
    ray.shutdown()


def node_id() -> str:
    import ray

    (node,) = ray.nodes()
    return node["NodeID"]


def test_training_follows_the_head_address_to_a_new_cluster(ray_client_address):
    import ray

    task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    task = task.model_copy(update={"training": TrainingSpec(families=["tfidf"], num_cpus=1)})
    train = datasets.youtube("train").subset(range(200))
    data = TrainingSet.from_gold(task.label_names, train.texts, train.labels)

    old = Cluster(ray_client_address)
    try:
        assert train_candidate(task, data, use_ray=True).family == "tfidf"
        old_node = node_id()
    finally:
        old.delete()  # the switch-over: the old cluster is gone...
    new = Cluster(ray_client_address)  # ...and a new one answers at the same address
    try:
        candidate = train_candidate(task, data, use_ray=True)
        assert candidate.family == "tfidf" and candidate.files.onnx
        assert ray.is_initialized() and node_id() != old_node  # trained on the new cluster
    finally:
        ray.shutdown()
        new.delete()
