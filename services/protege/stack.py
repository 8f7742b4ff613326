"""Protégé on one machine: the embedded Kafka broker, the Ray Serve app and the
improver, started in that order and stopped in reverse. `protege up` and
`protege demo` both start it through here.

>>> with LocalStack(Settings()) as stack:          # doctest: +SKIP
...     httpx.post(f"{stack.url}/v1/tasks/youtube-spam/predict", json={"text": "hi"})
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from pydantic import SecretStr

from protege.settings import Settings, public_args, secret_env, secret_value

log = logging.getLogger(__name__)

# The improver flushes its state on SIGINT; past this it is killed.
IMPROVER_STOP_TIMEOUT_S = 15.0
# Imports, the store, joining its consumer group (Tansu delays a join by ~5 s): well
# under a minute on a busy 2-core machine.
IMPROVER_READY_TIMEOUT_S = 120.0


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a supervisor) stop the stack as Ctrl-C does: it raises
    KeyboardInterrupt in the main thread, so `finally` blocks stop every process started.
    (A background job started by a script ignores SIGINT, so `kill -INT` cannot.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as PROTEGE_* variables, so that a child process sees the same deployment."""
    env = {}
    for name, value in public_args(settings).items():
        if value is None or isinstance(value, (dict, list)):
            continue
        env[f"PROTEGE_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return {**env, **secret_env(settings)}  # a child's environment is where secrets belong


def curl_examples(url: str, auth_disabled: bool, key: str | None = None) -> str:
    """Commands a person can paste to try the API: with `key` in them when given, else
    reading it from $PROTEGE_KEY (double quotes, so that the shell expands it)."""
    if auth_disabled:
        header = ""
    elif key:
        header = f" -H 'Authorization: Bearer {key}'"
    else:
        header = ' -H "Authorization: Bearer $PROTEGE_KEY"'
    return (
        f"  curl -s {url}/v1/tasks/youtube-spam/predict{header} -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"text": "Check out my channel, subscribe!"}}\'\n'
        f"  curl -s {url}/v1/tasks/banking77/predict{header} -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"text": "My card has not arrived yet"}}\'\n'
        f"  API reference: {url}/docs\n"
        f"  Review console: {url}/review"
        + (" (sign in with any name: auth is off)" if auth_disabled else "")
    )


def improver_command(args: Sequence[str] = ()) -> list[str]:
    """`protege improver run ARGS` with this interpreter (the venv's `protege` entry point
    need not be on PATH)."""
    return [sys.executable, "-m", "protege.cli", "improver", "run", *args]


class LocalStack:
    """The services of one Protégé deployment, as processes on this machine.

    Parameters
    ----------
    settings:
        The deployment; without `kafka_bootstrap` the embedded broker is started
        and its address filled in.
    improver_args:
        Arguments of `protege improver run`; None: no improver.
    log_dir:
        Where the broker's and the improver's output go (default: `<home>/logs`).
    fast_ingress:
        Ray Serve direct ingress (see `protege.serving.launch`).
    say:
        Progress lines for a person (default print).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        improver_args: Sequence[str] | None = None,
        log_dir: Path | None = None,
        fast_ingress: bool = False,
        say: Callable[[str], object] = print,
    ) -> None:
        self.settings = settings
        self.improver_args = improver_args
        self.log_dir = Path(log_dir) if log_dir else settings.home / "logs"
        self.fast_ingress = fast_ingress
        self.say = say
        self.broker = None
        self.improver: subprocess.Popen | None = None
        self.url: str | None = None
        self._serving = False  # Ray may be up even when the app never got ready
        self.pids: dict[str, int] = {}  # what was started, for the record

    @property
    def improver_log(self) -> Path:
        return self.log_dir / "improver.log"

    def start(self) -> Self:
        """Broker, Serve app, improver; on any failure what was started is stopped again.
        The tasks file is validated first: a bad one raises TasksFileError, nothing started."""
        self.settings.load_tasks()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_broker()
            if self.improver_args is not None:
                self._place_improver_api()
                self._give_improver_a_key()
            self._start_serve()
            if self.improver_args is not None:
                if not self.settings.fm_url:  # the improver asks this gateway's FM
                    self.settings = self.settings.model_copy(update={"fm_url": self.url})
                self._start_improver()
                self._wait_improver_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_broker(self) -> None:
        if self.settings.kafka_bootstrap:
            return
        from protege.events.broker import EmbeddedBroker

        self.broker = EmbeddedBroker(log_path=self.log_dir / "broker.log").start()
        self.settings = self.settings.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
        self.pids["broker"] = self.broker.pid
        self.say(f"embedded Kafka-protocol broker (Tansu, in memory) at {self.broker.bootstrap}")

    def _place_improver_api(self) -> None:
        """A port for the improver's API (unless one is set) and its URL for the gateway,
        which serves the review queue from it."""
        if not self.settings.improver_port:
            from protege.events.broker import free_port

            self.settings = self.settings.model_copy(update={"improver_port": free_port()})
        if not self.settings.improver_url:
            host = self.settings.improver_host
            self.settings = self.settings.model_copy(
                update={"improver_url": f"http://{host}:{self.settings.improver_port}"}
            )

    def _give_improver_a_key(self) -> None:
        """With auth on and no PROTEGE_FM_KEY: a key of this run's own, role `foundation`,
        for the improver's FM calls (kept in memory, gone with the processes)."""
        if self.settings.auth_disabled or self.settings.fm_key:
            return
        key = secrets.token_urlsafe(24)
        entries = [secret_value(self.settings.api_keys), f"protege-improver:{key}=foundation"]
        self.settings = self.settings.model_copy(
            update={
                "api_keys": SecretStr(";".join(filter(None, entries))),
                "fm_key": SecretStr(key),
            }
        )

    def _start_serve(self) -> None:
        from protege.serving.launch import start_serve

        self.say(
            f"starting the Serve app (tasks from {self.settings.tasks_file}); "
            "the first start on a machine converts the CPU model (~30 s)"
        )
        self._serving = True
        self.url = start_serve(self.settings, fast_ingress=self.fast_ingress)
        self._place_ray_dashboard()

    def _place_ray_dashboard(self) -> None:
        """The improver (another process) trains as jobs on this Ray: tell it its dashboard."""
        from protege.jobs import connected_dashboard

        url = None if self.settings.ray_dashboard_url else connected_dashboard()
        if url:
            self.settings = self.settings.model_copy(update={"ray_dashboard_url": url})

    def _start_improver(self) -> None:
        from protege.events.broker import _die_with_parent_hook

        env = {**os.environ, **settings_env(self.settings)}
        with open(self.improver_log, "ab") as out:
            self.improver = subprocess.Popen(
                improver_command(self.improver_args),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: the terminal's Ctrl-C reaches only us, and we
                # stop it in order (it must not die before the app it feeds on).
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509
            )
        self.pids["improver"] = self.improver.pid
        self.say(f"improver started (pid {self.improver.pid}; log {self.improver_log})")

    def _wait_improver_ready(self) -> None:
        """Until the improver's /readyz says 200: its store answers and its intake joined
        the consumer group, so that traffic from now on reaches the review queue."""
        import time

        import httpx

        deadline = time.monotonic() + IMPROVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.improver_exit_code()
            if code is not None:
                raise RuntimeError(f"the improver exited with {code}; see {self.improver_log}")
            try:
                if httpx.get(f"{self.settings.improver_url}/readyz", timeout=2).status_code == 200:
                    self.say("improver ready (store, intake, review queue)")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"the improver was not ready after {IMPROVER_READY_TIMEOUT_S:.0f} s; "
            f"see {self.improver_log}"
        )

    def improver_exit_code(self) -> int | None:
        """None while the improver runs (or when there is none)."""
        return None if self.improver is None else self.improver.poll()

    def stop(self) -> None:
        """Improver, Serve app, broker: each is stopped even when another fails to."""
        process, self.improver = self.improver, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(IMPROVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "improver ignored SIGINT for %.0f s; killing it", IMPROVER_STOP_TIMEOUT_S
                )
                process.kill()
                process.wait()
        if self._serving:
            from protege.serving.launch import stop_serve

            self.url, self._serving = None, False
            try:
                stop_serve()
            except Exception:
                log.exception("stopping the Serve app failed")
        broker, self.broker = self.broker, None
        if broker is not None:
            broker.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
