"""`EventProducer`: events to Kafka without ever making a request wait.

`publish(event)` puts the event on a bounded in-memory queue and returns; a
background thread sends it with kafka-python (idempotent, acks=all). When the
broker does not acknowledge within `kafka_ack_timeout_s`, or refuses to, or
the queue is full, events go to the disk spool (`Spool`) and are replayed in
order once the broker answers again; spool left by an earlier process is
replayed at start. The caller's thread never touches the disk: a full queue's
overflow goes to a second queue (`events_spool_queue_size`), which a thread of its
own writes to the spool; only when that one is full too (the disk far behind) is an
event dropped, counted and logged, rather than make a request wait. Each reconnect
builds a fresh KafkaProducer, because a restarted broker has forgotten the old one's
idempotent session.

Delivery is at-least-once: an event whose acknowledgement was lost may arrive
twice, with the same event_id. Events keep their publish order, except that
events overflowing a full queue may overtake the few still queued.

>>> producer = EventProducer(settings)      # doctest: +SKIP
>>> producer.publish(prediction_event)      # returns in microseconds, whatever Kafka does
>>> producer.stats()["produced"]            # doctest: +SKIP
>>> producer.close(timeout=10)              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from kafka import KafkaProducer
from kafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from kafka.future import Future

from protege.events.client import bootstrap_addresses, client_config
from protege.events.spool import Spool, SpoolBusy
from protege.events.topics import ensure_topics, topic_names
from protege.schemas import Event
from protege.settings import Settings

log = logging.getLogger(__name__)

# Errors about one record that no retry will fix: counted as rejected and skipped,
# so that a poisoned record cannot hold the spool's replay hostage.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidTopicError)

MAX_DRAIN = 5000  # events moved per wake-up, so that acks and replay get their turn
REPLAY_BATCH = 500  # records sent between acknowledgement checks during replay
# The worker wakes on a clock rather than per event: a publish then wakes no thread, and
# each wake-up moves a batch. Bounds the added latency, the counters' lag and failure detection.
DRAIN_INTERVAL_S = 0.01
FIRST_RECONNECT_S = 0.05
DROP_LOG_EVERY_S = 10.0
MAX_SPOOL_SLOTS = 256  # producer processes sharing one spool directory (replicas on a node)


class EventCounters:
    """Monotonic counts, safe to read from any thread (the gateway exports them as metrics).

    produced: events the broker acknowledged (replayed ones included).
    spooled:  events written to the disk spool.
    replayed: spooled events the broker acknowledged (from this or an earlier process).
    dropped:  events lost because the spool's disk budget was exhausted (logged as errors).
    rejected: events the broker refused for good (too large for it, invalid topic).
    """

    NAMES = ("produced", "spooled", "replayed", "dropped", "rejected")

    def __init__(self, on_count: Callable[[str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)
        self._on_count = on_count

    def add(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self._values[name] += n
        if self._on_count is not None:
            try:
                self._on_count(name, n)
            except Exception:  # a metrics hook must never break delivery
                log.exception("event counter callback failed")

    @property
    def produced(self) -> int:
        return self._values["produced"]

    @property
    def spooled(self) -> int:
        return self._values["spooled"]

    @property
    def replayed(self) -> int:
        return self._values["replayed"]

    @property
    def dropped(self) -> int:
        return self._values["dropped"]

    @property
    def rejected(self) -> int:
        return self._values["rejected"]

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


@dataclass(slots=True)
class _InFlight:
    future: Future
    topic: str
    key: bytes | None
    value: bytes
    sent_at: float


class EventProducer:
    """Publishes `PredictionEvent`, `FeedbackEvent` and `ModelEvent` to their topics.

    Parameters
    ----------
    settings:
        `kafka_bootstrap` (required), security pass-through, topic names,
        `kafka_ack_timeout_s`, `events_queue_size` and the `events_spool_*` fields.
    on_count:
        Called as `on_count(name, n)` whenever a counter grows, from whichever
        thread grew it; for wiring to Ray Serve / Prometheus counters.

    The background thread starts on the first `publish()` (or `start()`);
    `publish` is safe from any thread or event loop and never blocks on Kafka.
    """

    def __init__(
        self, settings: Settings, *, on_count: Callable[[str, int], None] | None = None
    ) -> None:
        self.settings = settings
        self._client_config = client_config(settings)  # fails early when unconfigured
        self._topics = topic_names(settings)
        self._ack_timeout_s = settings.kafka_ack_timeout_s
        self.counters = EventCounters(on_count)
        self._queue: queue.Queue[tuple[str, Event]] = queue.Queue(settings.events_queue_size)
        # The full queue's overflow, on its way to the spool (written by _spool_writer).
        self._overflow: queue.Queue[tuple[str, Event]] = queue.Queue(
            settings.events_spool_queue_size
        )
        self.slot = -1  # which producer-<n> spool slot this process holds (set next)
        self._spool = self._open_spool()
        self._lock = threading.Lock()
        self._unsettled = 0  # accepted into the queue, not yet acknowledged or spooled
        self._published = 0
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()
        self._closed = False
        self._close_deadline = float("inf")
        # Owned by the worker thread.
        self._producer: KafkaProducer | None = None
        self._inflight: deque[_InFlight] = deque()
        self._next_connect = 0.0
        self._reconnect_wait = FIRST_RECONNECT_S
        self._outage_logged = False
        self._last_drop_log = 0.0
        self._gave_up = False  # closing, and the broker could not be reached

    # ------------------------------------------------------------------ caller side

    def start(self) -> EventProducer:
        """Start the background thread (idempotent). `publish` calls it on first use."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="protege-event-producer", daemon=True
                )
                self._writer = threading.Thread(
                    target=self._spool_overflow, name="protege-event-spooler", daemon=True
                )
                self._thread.start()
                self._writer.start()
        return self

    def publish(self, event: Event) -> None:
        """Queue `event` for Kafka; never blocks, never raises for Kafka trouble."""
        topic = self._topics.get(getattr(event, "kind", None))
        if topic is None:
            raise TypeError(f"not a publishable event: {type(event).__name__}")
        if self._thread is None:
            self.start()
        with self._lock:
            self._published += 1
            if not self._closed:
                for waiting in (self._queue, self._overflow):
                    try:
                        waiting.put_nowait((topic, event))
                        self._unsettled += 1
                        return
                    except queue.Full:
                        continue
        if not self._closed:  # both queues full: the disk cannot keep up
            self._drop()
            return
        # Already closed (a request during shutdown): straight to disk.
        self._to_spool(topic, event.key.encode(), event.model_dump_json().encode())
        self._spool.close()  # durable now, and the slot is free for the next producer

    def stats(self) -> dict[str, Any]:
        """Counters plus the current backlog: for /metrics, health pages and tests."""
        stats: dict[str, Any] = self.counters.as_dict()
        stats.update(
            published=self._published,
            in_memory=self._unsettled,
            spool_pending=self._spool.pending,
            spool_bytes=self._spool.disk_bytes,
            connected=self._producer is not None,
        )
        return stats

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event so far is acknowledged by Kafka (spool drained included).

        Returns False on timeout, e.g. while the broker is down. Does not stop anything.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._unsettled == 0 and self._spool.pending == 0:
                return True
            time.sleep(0.01)
        return self._unsettled == 0 and self._spool.pending == 0

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what can be delivered within `timeout`, spool the rest, stop.

        Returns True when nothing is left undelivered. Events published after
        close go straight to the spool, for the next process to replay.
        """
        with self._lock:
            self._closed = True
            thread, writer = self._thread, self._writer
        if thread is not None:
            self._close_deadline = time.monotonic() + timeout
            self._closing.set()
            thread.join(timeout + 2 * self._ack_timeout_s)
            if thread.is_alive():  # pragma: no cover - the worker bounds every wait
                log.error("event producer thread did not stop in time")
        if writer is not None:
            writer.join(timeout)
        self._spool.close()
        return self._unsettled == 0 and self._spool.pending == 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_spool(self) -> Spool:
        """The first free slot `<events_spool_dir>/producer-<n>`: one per live process."""
        for slot in range(MAX_SPOOL_SLOTS):
            try:
                spool = Spool(
                    self.settings.events_spool_dir / f"producer-{slot}",
                    max_bytes=self.settings.events_spool_max_bytes,
                    segment_bytes=self.settings.events_spool_segment_bytes,
                )
            except SpoolBusy:
                continue
            self.slot = slot
            return spool
        raise RuntimeError(
            f"all {MAX_SPOOL_SLOTS} spool slots in {self.settings.events_spool_dir} are busy"
        )

    def adopt_orphans(self) -> None:
        """Move what dead processes left in other slots into this spool, for replay.
        Done at start; safe to call again from any thread (`protege events drain` does)."""
        for path in sorted(self.settings.events_spool_dir.glob("producer-*")):
            if path == self._spool.directory or not path.is_dir():
                continue
            try:
                orphan = Spool(path, max_bytes=self.settings.events_spool_max_bytes)
            except SpoolBusy:  # a live producer owns it
                continue
            adopted = 0
            try:
                while records := orphan.read(REPLAY_BATCH):
                    taken = 0
                    for record in records:
                        if not self._spool.append(record.topic, record.key, record.value):
                            break
                        taken += 1
                    if not taken:
                        break
                    self._spool.sync()  # our copy is durable before the orphan forgets it
                    orphan.commit(records[taken - 1].position, taken)
                    adopted += taken
                    if taken < len(records):
                        break
            finally:
                orphan.close()
            if adopted:
                log.info("adopted %d spooled events left in %s", adopted, path)

    def _to_spool(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._spool.append(topic, key, value):
            self.counters.add("spooled")
            return
        self._drop()

    def _drop(self) -> None:
        self.counters.add("dropped")
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error(
                "event spool %s cannot take more (%d bytes, budget %d; %d events waiting "
                "to be written): dropping events (%d so far)",
                self._spool.directory,
                self._spool.disk_bytes,
                self._spool.max_bytes,
                self._overflow.qsize(),
                self.counters.dropped,
            )

    def _spool_overflow(self) -> None:
        """The spool writer: the full queue's overflow to disk, off the callers' threads."""
        while True:
            try:
                topic, event = self._overflow.get(timeout=DRAIN_INTERVAL_S * 10)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self._to_spool(topic, event.key.encode(), event.model_dump_json().encode())
            except Exception:  # noqa: BLE001 - the writer must outlive a disk error
                log.exception("writing an event to the spool failed")
                self._drop()
            finally:
                self._settle()

    def _settle(self, n: int = 1) -> None:
        with self._lock:
            self._unsettled -= n

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        try:
            self.adopt_orphans()
        except Exception:  # never fatal: the orphans stay on disk for the next start
            log.exception("could not adopt spool left by other processes")
        last_sync = time.monotonic()
        while True:
            try:
                done = self._step()
            except Exception:  # the worker must outlive any surprise; events stay queued
                log.exception("event producer loop failed; retrying")
                self._failover("unexpected error")
                time.sleep(DRAIN_INTERVAL_S)
                done = False
            now = time.monotonic()
            if now - last_sync >= self.settings.events_spool_fsync_s:
                self._spool.sync()
                last_sync = now
            if done:
                break
        self._shutdown()

    def _step(self) -> bool:
        """One pass: connect, settle acks, move queued events, replay. True when closing is done."""
        closing = self._closing.is_set()
        if self._producer is None and not self._gave_up:
            if closing:
                # One last try, backoff or not; failing that, the queue goes to disk.
                self._gave_up = not self._connect()
            elif time.monotonic() >= self._next_connect:
                self._connect()
        self._reap()
        replaying = self._producer is not None and self._spool.pending > 0
        wait = 0.0 if (closing or replaying) else DRAIN_INTERVAL_S
        for topic, event in self._take_queued(wait):
            self._dispatch(topic, event)
        if self._producer is not None and self._spool.pending > 0:
            self._replay_batch()
        if closing:
            nothing_left = self._queue.empty() and not self._inflight and self._spool.pending == 0
            if nothing_left or self._gave_up or time.monotonic() >= self._close_deadline:
                return True
            if self._inflight:
                time.sleep(0.005)
        return False

    def _take_queued(self, wait: float) -> list[tuple[str, Event]]:
        if wait:
            self._closing.wait(wait)  # a sleep that close() cuts short
        items = []
        try:
            while len(items) < MAX_DRAIN:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return items

    def _dispatch(self, topic: str, event: Event) -> None:
        key = event.key.encode()
        value = event.model_dump_json().encode()
        if self._producer is None or self._spool.pending > 0:
            # Broker away, or older events still on disk: keep the order, join the spool.
            self._to_spool(topic, key, value)
            self._settle()
            return
        try:
            future = self._producer.send(topic, value=value, key=key)
        except RECORD_ERRORS as exc:
            self._reject(topic, exc)
            self._settle()
            return
        except KafkaError as exc:  # buffer full or metadata unavailable: the broker is in trouble
            self._to_spool(topic, key, value)
            self._settle()
            self._failover(f"send failed: {exc!r}")
            return
        self._inflight.append(_InFlight(future, topic, key, value, time.monotonic()))

    def _reap(self) -> None:
        """Settle acknowledged in-flight events; fail over when the oldest waits too long."""
        inflight = self._inflight
        while inflight and inflight[0].future.is_done:
            item = inflight.popleft()
            if item.future.succeeded():
                self.counters.add("produced")
                self._settle()
            elif isinstance(item.future.exception, RECORD_ERRORS):
                self._reject(item.topic, item.future.exception)
                self._settle()
            else:
                inflight.appendleft(item)
                self._failover(f"delivery failed: {item.future.exception!r}")
                return
        if inflight and time.monotonic() - inflight[0].sent_at > self._ack_timeout_s:
            self._failover(f"no acknowledgement in {self._ack_timeout_s:g}s")

    def _reject(self, topic: str, exc: BaseException) -> None:
        self.counters.add("rejected")
        log.error("Kafka refused an event for %s for good: %r", topic, exc)

    def _failover(self, reason: str) -> None:
        """Drop the producer, spool every unacknowledged in-flight event, reconnect later."""
        self._abandon_producer()
        self._next_connect = time.monotonic() + self._reconnect_wait
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "Kafka unavailable (%s); spooling events to %s", reason, self._spool.directory
            )

    def _abandon_producer(self) -> None:
        producer, self._producer = self._producer, None
        for item in self._inflight:
            if item.future.succeeded():
                self.counters.add("produced")
            else:  # maybe delivered after all: at-least-once, consumers dedupe by event_id
                self._to_spool(item.topic, item.key, item.value)
        self._settle(len(self._inflight))
        self._inflight.clear()
        if producer is not None:
            _close_now(producer)

    def _connect(self) -> bool:
        if not self._reachable():
            self._schedule_reconnect()
            return False
        timeout_ms = int(self._ack_timeout_s * 1000)
        producer = None
        try:
            producer = KafkaProducer(
                **{
                    "acks": "all",
                    "enable_idempotence": True,
                    "linger_ms": self.settings.kafka_linger_ms,
                    "max_block_ms": timeout_ms,
                    "bootstrap_timeout_ms": timeout_ms,
                    "request_timeout_ms": timeout_ms,
                    "delivery_timeout_ms": 4 * timeout_ms + 5,
                    "reconnect_backoff_max_ms": 1000,
                    # A restarted Tansu has no topics; auto-creating them from a metadata
                    # request would ignore the configured partition count.
                    "allow_auto_create_topics": False,
                    **self._client_config,
                }
            )
            self._ensure_topics()
            for topic in set(self._topics.values()):
                producer.partitions_for(topic)  # metadata now, so that send() never waits for it
        except Exception as exc:  # noqa: BLE001 - any failure means: not yet, retry later
            log.info("Kafka at %s not ready: %r", self.settings.kafka_bootstrap, exc)
            if producer is not None:
                _close_now(producer)
            self._schedule_reconnect()
            return False
        self._producer = producer
        self._reconnect_wait = FIRST_RECONNECT_S
        if self._outage_logged or self._spool.pending:
            log.warning(
                "Kafka at %s is back; replaying %d spooled events",
                self.settings.kafka_bootstrap,
                self._spool.pending,
            )
        self._outage_logged = False
        return True

    def _ensure_topics(self) -> None:
        try:
            ensure_topics(self.settings, timeout_s=self._ack_timeout_s)
        except TopicAuthorizationFailedError:
            log.info("not allowed to create topics; assuming they exist")
        except KafkaError as exc:
            # A cluster may forbid the admin API; producing can still work.
            log.warning("could not check or create topics: %r", exc)

    def _reachable(self) -> bool:
        """Cheap check before building a client: does any bootstrap address accept TCP?"""
        for host, port in bootstrap_addresses(self.settings):
            try:
                with socket.create_connection((host, port), timeout=min(1.0, self._ack_timeout_s)):
                    return True
            except OSError:
                continue
        return False

    def _schedule_reconnect(self) -> None:
        self._next_connect = time.monotonic() + self._reconnect_wait
        self._reconnect_wait = min(self._reconnect_wait * 2, self.settings.kafka_reconnect_max_s)

    def _replay_batch(self) -> None:
        """Send the oldest spooled records; commit the acknowledged prefix."""
        records = self._spool.read(REPLAY_BATCH)
        if not records:
            return
        futures: list[Future] = []
        error: str | None = None
        for record in records:
            try:
                futures.append(
                    self._producer.send(record.topic, value=record.value, key=record.key)
                )
            except RECORD_ERRORS as exc:
                futures.append(Future().failure(exc))
            except KafkaError as exc:
                error = f"replay send failed: {exc!r}"
                break
        try:
            self._producer.flush(timeout=self._ack_timeout_s)
        except KafkaError:
            pass  # judged below, record by record
        done = 0
        for future in futures:
            if future.succeeded():
                done += 1
                continue
            if isinstance(future.exception, RECORD_ERRORS):
                self._reject(records[done].topic, future.exception)
                done += 1
                continue
            error = error or (
                f"replay failed: {future.exception!r}"
                if future.is_done
                else f"no acknowledgement in {self._ack_timeout_s:g}s"
            )
            break
        if done:
            # Count before committing, so that a drained spool never shows uncounted replays.
            produced = sum(1 for f in futures[:done] if f.succeeded())
            self.counters.add("replayed", produced)
            self.counters.add("produced", produced)
            self._spool.commit(records[done - 1].position, done)
        if error:
            self._failover(error)

    def _shutdown(self) -> None:
        for topic, event in self._take_queued(0):
            self._to_spool(topic, event.key.encode(), event.model_dump_json().encode())
            self._settle()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=max(0.0, self._close_deadline - time.monotonic()))
            except KafkaError:
                pass
        self._abandon_producer()
        self._spool.sync()


def _close_now(producer: KafkaProducer) -> None:
    """Close without waiting, abandoning unsent records (they are in the spool by now).

    kafka-python 3's `close(timeout=0)` flushes first and raises on the timeout
    before it force-closes, which would leave the old sender thread running,
    reconnecting with a producer id the restarted broker does not know, and
    delivering records that were already spooled.
    """
    try:
        producer.close(timeout=0)
        return
    except KafkaError:  # the flush inside close() timed out: force it
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
    try:
        producer.close(timeout=0)
    except Exception:  # pragma: no cover - best effort; the sender is stopping anyway
        log.debug("closing the old producer failed", exc_info=True)
