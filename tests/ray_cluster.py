"""A real single-node Ray cluster for tests: `ray start --head --block` on free ports
(other Rays on the machine keep theirs), its dashboard (the Jobs API) on `dashboard_port`,
Ray Client on `client_port`."""

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

from protege.events.broker import free_port

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
    """`ray start --head --block` in a process group of its own; `delete()` kills every
    process of it at once, as deleting its pods would. With `dashboard`, the Jobs API
    answers at `.dashboard_url` once the constructor returns."""

    def __init__(
        self,
        client_port: int | None = None,
        *,
        dashboard_port: int | None = None,
        num_cpus: int = 1,
    ):
        # Short: Ray's unix sockets live under it (108 characters at most).
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.client_port = client_port or free_port()
        self.dashboard_port = dashboard_port
        args = [RAY, "start", "--head", "--block", f"--num-cpus={num_cpus}"]
        args += ["--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        args += [f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={self.client_port}"]
        args += [f"--{name}={free_port()}" for name in PORTS]
        if dashboard_port:
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
            args += [f"--dashboard-port={dashboard_port}"]
        else:
            args += ["--include-dashboard=false"]
        # gRPC's fork handlers crash Ray Client's proxy now and then when it forks its
        # per-client server on a loaded machine; the proxy needs none of them.
        env = {
            **os.environ,
            "GRPC_ENABLE_FORK_SUPPORT": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        }
        self.log = Path(self.temp_dir) / "start.log"
        self.process = subprocess.Popen(
            args,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._wait_for(self.client_port)
        if dashboard_port:
            self._wait_for_jobs_api()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _wait_for(self, port: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.5)

    def _wait_for_jobs_api(self, timeout_s: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.5)

    def delete(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
