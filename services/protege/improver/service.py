"""The long-running improver (`protege improver run`): the loop that needs nobody.

Three threads:

- intake: `Ingestor` consumes `<ns>.predictions` and `<ns>.feedback` into the
  example store (group `Settings.improver_group`, by default `<ns>-improver`; it
  commits after the store has them);
- requests: consumes `<ns>.models` for `RetrainRequest`s (group
  `<group>-requests`: one improver replica takes each) and records them in
  the store's `RoundLedger`, so that a restart does not lose one;
- rounds: every `Settings.store_prune_s` applies each task's `retention` to the store
  (the store's size stays bounded); every `Settings.improver_check_s` (at once after
  a request) asks each task
  whether a round is due (`triggers.due`: a request, `retrain.every_feedback` new
  feedback events in the store, or `retrain.every_minutes` with new events) and runs
  it (`loop.run_round`), one at a time; each round's ModelEvent goes to
  `protege.models`, where every gateway replica's ChampionWatcher picks it up.

Triggers count what is in the store, not what this process consumed, so several
replicas (or a restart) agree on them; the ledger's lease keeps a task to one round.

`stop()` (SIGTERM) takes no new work at once, gives a round in progress
`Settings.improver_stop_timeout_s` to finish, then abandons it: the lease is released
as `interrupted` (so that the task can train again at once, not after
`improver_lease_s`) and its training job stopped.

With `PROTEGE_IMPROVER_PORT` set, a fourth thread serves the internal HTTP API
(`protege.improver.api`: /livez, /readyz and the review queue, which ranks with the
label model of this process's last round of the task).

>>> service = ImproverService(settings).start()   # doctest: +SKIP
>>> service.stop()                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from protege.improver.data.ingest import Ingestor
from protege.improver.data.ledger import RoundLedger
from protege.improver.data.store import ExampleStore
from protege.improver.loop import (
    RoundReport,
    TrainingInProgress,
    default_holder,
    lazy_backend,
    run_round,
)
from protege.improver.training.jobs import cancel_training
from protege.improver.triggers import due
from protege.schemas import Event, RetrainRequest
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

RESULTS_KEPT = 100  # recent round results kept in memory for status and tests
# After the round: the intake ends its batch and commits, the request consumer its poll
# (both poll in <= 1 s), the producer sends or spools; within improver_stop_timeout_s + 10 s.
THREADS_STOP_S = 4.0
PRODUCER_CLOSE_S = 2.0
# /livez: the rounds loop must have ticked within max(this many checks, the floor below).
LIVE_TICKS = 3
LIVE_FLOOR_S = 60.0


class ImproverService:
    """Intake, retrain requests and training rounds for `tasks` (default: all configured).

    Parameters
    ----------
    settings : Kafka, store, registry and FM settings.
    tasks : the tasks to improve, by name (default `settings.load_tasks()`).
    store, registry : built from settings when not given.
    publish : where ModelEvents go (default: a Kafka producer when a broker is configured).
    backend : the FM (or a factory of it) for prompt LFs and the exam; default the
        deployment's over HTTP, reached on first use and kept.
    group_id : the intake's consumer group (default `settings.improver_group`); retrain
        requests use `<group_id>-requests`.
    ingest : run the intake thread (off: another process fills the store).
    run : the round function (tests pass a fake); `run_round`'s signature.
    """

    def __init__(
        self,
        settings: Settings,
        tasks: Mapping[str, TaskSpec] | None = None,
        *,
        store: ExampleStore | None = None,
        registry=None,
        publish: Callable[[Event], object] | None = None,
        backend=None,
        group_id: str | None = None,
        ingest: bool = True,
        run: Callable[..., RoundReport] = run_round,
    ):
        self.settings = settings
        self.tasks = dict(tasks if tasks is not None else settings.load_tasks())
        settings.home.mkdir(parents=True, exist_ok=True)  # the default SQLite files live there
        self.store = store or ExampleStore.from_settings(settings)
        self.ledger = RoundLedger.of(self.store)
        self._registry = registry
        self._producer = None
        if publish is None and settings.kafka_bootstrap:
            from protege.events.producer import EventProducer

            self._producer = EventProducer(settings).start()
            publish = self._producer.publish
        self.publish = publish
        self.backend = backend if backend is not None else lazy_backend(settings)
        self.group_id = group_id or settings.improver_group
        self.ingest = ingest
        self.run = run
        self.holder = default_holder()
        self.results: deque[RoundReport] = deque(maxlen=RESULTS_KEPT)
        # task -> the label model of this process's last round and the LF sources it was
        # fitted on: the review queue's view of what the LFs say.
        self.label_models: dict[str, tuple] = {}
        self.ingestor: Ingestor | None = None
        self.api_server = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._in_progress: str | None = None  # the task whose round runs now
        self._ticked_at: float | None = None  # monotonic time of the rounds loop's last tick
        self._round_since: float | None = None  # a round is running since then

    @property
    def registry(self):
        if self._registry is None:
            from protege.registry import Registry

            self._registry = Registry.from_settings(self.settings)
        return self._registry

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ImproverService:
        if self.ingest:
            self.ingestor = Ingestor(self.store, self.settings, group_id=self.group_id)
            self._spawn("intake", lambda: self.ingestor.run(stop=self._stop))
        if self.settings.kafka_bootstrap:
            self._spawn("requests", self._consume_requests)
        self._spawn("rounds", self._rounds)
        if self.settings.improver_port:
            self._serve_api()
        log.info("improver started for %s", sorted(self.tasks))
        return self

    def _serve_api(self) -> None:
        import uvicorn

        from protege.improver.api import build_improver_api

        app = build_improver_api(
            self.tasks,
            self.store,
            live=self.live,
            ready=self.ready,
            label_models=self.label_models.get,
        )
        config = uvicorn.Config(
            app,
            host=self.settings.improver_host,
            port=self.settings.improver_port,
            log_level="warning",
            lifespan="off",
        )
        self.api_server = uvicorn.Server(config)
        # Not in _threads: /livez reports on the threads that do the work.
        thread = threading.Thread(
            target=self.api_server.run, name="protege-improver-api", daemon=True
        )
        thread.start()
        self._api_thread = thread
        log.info(
            "improver API on http://%s:%d", self.settings.improver_host, self.settings.improver_port
        )

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=f"protege-improver-{name}", daemon=True)
        thread.start()
        self._threads[name] = thread

    def request_stop(self) -> None:
        """Take no new work (safe from a signal handler); `stop()` does the rest."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work at once; a round in progress gets `timeout` (default
        `improver_stop_timeout_s`) to finish, and is then abandoned (`abandon`)."""
        timeout = self.settings.improver_stop_timeout_s if timeout is None else timeout
        self.request_stop()
        rounds = self._threads.get("rounds")
        if rounds is not None:
            rounds.join(timeout)
            task = self._in_progress
            if rounds.is_alive() and task is not None:
                self.abandon(task, f"the improver stopped; abandoned after {timeout:g} s")
        until = time.monotonic() + THREADS_STOP_S
        for name, thread in self._threads.items():
            if name != "rounds":
                thread.join(max(until - time.monotonic(), 0.0))
        if self.api_server is not None:
            self.api_server.should_exit = True
            self._api_thread.join(timeout)
        if self.ingestor is not None:
            self.ingestor.close()
        if self._producer is not None:
            self._producer.close(timeout=PRODUCER_CLOSE_S)

    def abandon(self, task: str, reason: str) -> None:
        """Give up this process's round of `task`: release its lease as `interrupted`
        first (the round's thread, should it still end, then finds the lease gone and
        neither registers nor records anything), then cancel its training on Ray."""
        log.warning("%s: round abandoned: %s", task, reason)
        self.ledger.release(task, self.holder, outcome="interrupted", detail=reason)
        cancel_training(task)

    def wait(self) -> None:
        """Block until `stop()` (from a signal handler or another thread)."""
        while not self._stop.wait(1.0):
            pass

    # ------------------------------------------------------------------ health

    def live(self, now: float | None = None) -> tuple[bool, dict]:
        """Alive: every thread runs, and the rounds loop ticked lately or is in a round
        (shorter than the lease: a longer one is stuck)."""
        now = time.monotonic() if now is None else now
        dead = [t.name for t in self._threads.values() if not t.is_alive()]
        window = max(LIVE_TICKS * self.settings.improver_check_s, LIVE_FLOOR_S)
        since_tick = None if self._ticked_at is None else now - self._ticked_at
        in_round = None if self._round_since is None else now - self._round_since
        ticking = (since_tick is not None and since_tick <= window) or (
            in_round is not None and in_round <= self.settings.improver_lease_s
        )
        detail = {
            "threads": {t.name: t.is_alive() for t in self._threads.values()},
            "seconds_since_tick": since_tick,
            "round_running_s": in_round,
        }
        if dead:
            detail["problem"] = f"threads stopped: {dead}"
        elif not ticking:
            detail["problem"] = f"the rounds loop has not ticked for {since_tick} s (> {window} s)"
        return not dead and ticking, detail

    def ready(self) -> tuple[bool, dict]:
        """Ready: the store answers and the intake (when this process runs one) joined
        its consumer group."""
        try:
            self.store.ping()
            store = True
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            store = f"{type(exc).__name__}: {exc}"
        intake = None if self.ingestor is None else self.ingestor.joined
        ok = store is True and intake is not False
        return ok, {"store": store, "intake_joined": intake}

    # ------------------------------------------------------------------ triggers

    def request(self, task: str, at: float | None = None) -> None:
        """A retrain request made at `at` (default now): recorded in the ledger, served at
        the next check (at once). A request older than the last round's start (one
        redelivered after a restart) was served by that round and starts nothing."""
        if task not in self.tasks:
            log.info("retrain request for %s, which this improver does not train", task)
            return
        self.ledger.request(task, now=at)
        self._wake.set()

    def due(self, now: float | None = None) -> dict[str, str]:
        """Tasks whose round is due, with the trigger."""
        now = time.time() if now is None else now
        found = {}
        for name, task in self.tasks.items():
            feedback, n_events = self.store.event_counts(name)
            reason = due(self.ledger.state(name), task.retrain, feedback, n_events, now)
            if reason:
                found[name] = reason
        return found

    def prune(self) -> dict[str, dict[str, int]]:
        """Apply each task's retention to the store; what was deleted, by task."""
        deleted = {}
        for name, task in self.tasks.items():
            keep = task.retention
            deleted[name] = self.store.prune(
                name,
                None if keep.max_age_days is None else keep.max_age_days * 86400.0,
                keep.max_predictions,
            )
        return deleted

    def run_due(self) -> list[RoundReport]:
        """Run every due round now, one after another."""
        done = []
        for name, trigger in self.due().items():
            if self._stop.is_set():
                break
            self._in_progress = name
            self._round_since = time.monotonic()
            try:
                result = self.run(
                    self.tasks[name],
                    self.store,
                    self.registry,
                    self.settings,
                    trigger=trigger,
                    publish=self.publish,
                    backend=self.backend,
                    holder=self.holder,
                )
            except TrainingInProgress as exc:
                log.info("%s", exc)
                continue
            finally:
                self._in_progress = None
                self._round_since = None
            if result.label_model is not None:
                self.label_models[name] = result.label_model
            self.results.append(result)
            done.append(result)
        return done

    # ------------------------------------------------------------------ threads

    def _rounds(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.settings.store_prune_s
                try:
                    self.prune()
                except Exception:  # the store briefly away: the next turn prunes
                    log.exception("applying retention failed")
            self._ticked_at = time.monotonic()
            try:
                self.run_due()
            except Exception:  # the store or registry briefly away: try again next check
                log.exception("checking for due rounds failed")
            self._wake.wait(self.settings.improver_check_s)
            self._wake.clear()

    def _consume_requests(self) -> None:
        from protege.events.consumer import EventConsumer

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = EventConsumer(
                        self.settings,
                        group_id=f"{self.group_id}-requests",
                        topics=[self.settings.kafka_topic_models],
                    )
                consumer.process(self._handle_requests, timeout_s=1.0)
            except Exception as exc:  # noqa: BLE001 - broker away: retry; nothing was committed
                log.warning("retrain-request consumer: %r", exc)
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _handle_requests(self, batch: list[Event]) -> None:
        for event in batch:
            if isinstance(event, RetrainRequest):
                log.info("retrain requested for %s by %s", event.task, event.requested_by)
                self.request(event.task, at=event.timestamp)
