"""`EventConsumer`: read events back as schema objects, at least once, without double counting.

A consumer group member with manual commits: a batch's offsets are committed
only after the handler returned, so a crash or a restart redelivers the batch
instead of losing it. Redeliveries are recognised by event_id (within a
bounded window; the improver's store is the durable dedupe) and skipped.
Records with a `schema_version` or `kind` this code does not know are skipped
and counted, never fatal, so that producers can be upgraded first.

>>> with EventConsumer(settings, group_id="improver") as consumer:   # doctest: +SKIP
...     consumer.run(store.add_events, stop=stop_event)
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Self

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from protege.events.client import client_config
from protege.events.topics import ensure_topics, topic_names
from protege.schemas import (
    EVENT_SCHEMA_VERSION,
    Event,
    FeedbackEvent,
    ModelEvent,
    PredictionEvent,
    RetrainRequest,
)
from protege.settings import Settings

log = logging.getLogger(__name__)

EVENT_CLASSES: dict[str, type[Event]] = {
    "prediction": PredictionEvent,
    "feedback": FeedbackEvent,
    "model": ModelEvent,
    "retrain": RetrainRequest,
}
KNOWN_SCHEMA_VERSIONS = frozenset(range(1, EVENT_SCHEMA_VERSION + 1))


class UnknownEvent(ValueError):
    """A record this code cannot read: unknown schema_version or kind (skipped and counted)."""


def parse_event(value: bytes | str) -> Event:
    """A record's JSON value as its event class, chosen by `kind`.

    Raises `UnknownEvent` for a schema_version or kind this code does not know,
    and ValueError (json or pydantic) for anything unreadable.
    """
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"event is not a JSON object: {type(data).__name__}")  # noqa: TRY004
    version = data.get("schema_version")
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise UnknownEvent(f"schema_version {version!r}")
    cls = EVENT_CLASSES.get(data.get("kind"))
    if cls is None:
        raise UnknownEvent(f"kind {data.get('kind')!r}")
    return cls.model_validate(data)


class EventConsumer:
    """A member of consumer group `group_id` on the event topics.

    Parameters
    ----------
    settings:
        Bootstrap, security, topic names and `kafka_session_timeout_ms` (Tansu
        delays a new member's join by about this long, so tests use ~1000).
    group_id:
        Consumer group; each service that needs every event has its own.
    topics:
        Topic names; default all three event topics.
    dedupe_window:
        How many recent event_ids are remembered to skip redeliveries.
    max_records:
        Most records in one batch.
    create_topics:
        Create the event topics first when missing (best effort).
    **overrides:
        Extra KafkaConsumer arguments.
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Iterable[str] | None = None,
        *,
        dedupe_window: int = 100_000,
        max_records: int = 500,
        create_topics: bool = True,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics = list(
            dict.fromkeys(topics if topics is not None else topic_names(settings).values())
        )
        session_ms = settings.kafka_session_timeout_ms
        config = {
            **client_config(settings),
            "group_id": group_id,
            "enable_auto_commit": False,
            # Tansu's ListOffsets(latest) is off by a batch: never start from "latest".
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": max(100, session_ms // 3),
            "max_poll_records": max_records,
            "fetch_max_wait_ms": 100,
            **overrides,
        }
        if create_topics:
            # Before subscribing: a broker that auto-creates topics for a subscriber (Tansu)
            # would otherwise pick its own partition count.
            try:
                ensure_topics(settings)
            except Exception as exc:  # noqa: BLE001 - a cluster may forbid the admin API
                log.warning("could not check or create topics: %r", exc)
        self._consumer = KafkaConsumer(**config)
        self._consumer.subscribe(self.topics)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._batch_start: dict[TopicPartition, int] = {}
        self._batch_ids: set[str] = set()
        self._counts = dict.fromkeys(
            ("records", "events", "duplicates", "skipped", "invalid", "commits", "retries"), 0
        )

    # ------------------------------------------------------------------ two-step API

    def poll(self, timeout_s: float = 1.0) -> list[Event]:
        """The next batch of new events (duplicates and unknown records left out).

        Call `commit()` once they are safely processed; `rewind()` to get them again.
        """
        records = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        events: list[Event] = []
        for tp, batch in records.items():
            if batch:
                self._batch_start.setdefault(tp, batch[0].offset)
            for record in batch:
                self._counts["records"] += 1
                try:
                    event = parse_event(record.value)
                except UnknownEvent as exc:
                    self._counts["skipped"] += 1
                    log.info("skipping %s@%d: %s", tp.topic, record.offset, exc)
                    continue
                except (ValueError, ValidationError) as exc:
                    self._counts["invalid"] += 1
                    log.warning("unreadable event %s@%d: %s", tp.topic, record.offset, exc)
                    continue
                if event.event_id in self._seen or event.event_id in self._batch_ids:
                    self._counts["duplicates"] += 1
                    continue
                self._batch_ids.add(event.event_id)
                events.append(event)
        self._counts["events"] += len(events)
        return events

    def commit(self) -> bool:
        """Commit everything polled so far; its event_ids count as seen from now on.

        Returns False when the group rebalanced meanwhile: the batch will be
        redelivered (to this or another member), as at-least-once allows.
        """
        ok = True
        if self._batch_start:
            try:
                self._consumer.commit()
                self._counts["commits"] += 1
            except CommitFailedError as exc:
                log.warning("commit failed, batch will be redelivered: %s", exc)
                ok = False
        for event_id in self._batch_ids:
            self._seen[event_id] = None
        while len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        self._batch_start.clear()
        self._batch_ids.clear()
        return ok

    def rewind(self) -> None:
        """Forget the uncommitted batch and seek back, so that the next poll returns it again."""
        assigned = self._consumer.assignment()
        for tp, offset in self._batch_start.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        self._batch_start.clear()
        self._batch_ids.clear()
        self._counts["retries"] += 1

    # ------------------------------------------------------------------ handler API

    def process(self, handler: Callable[[list[Event]], object], timeout_s: float = 1.0) -> int:
        """Poll one batch, hand it to `handler`, commit after it returns; the number handled.

        When the handler raises, nothing is committed, the batch is rewound and
        the exception propagates: the next call sees the same events again.
        """
        events = self.poll(timeout_s)
        if not events and not self._batch_start:
            return 0
        try:
            if events:
                handler(events)
        except BaseException:
            self.rewind()
            raise
        self.commit()
        return len(events)

    def run(
        self,
        handler: Callable[[list[Event]], object],
        *,
        stop: threading.Event | None = None,
        poll_timeout_s: float = 0.5,
        retry_wait_s: float = 1.0,
    ) -> None:
        """Process batches until `stop` is set; a failing handler is retried after `retry_wait_s`."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.process(handler, poll_timeout_s)
            except KafkaError as exc:
                log.warning("consumer error, retrying: %r", exc)
                stop.wait(retry_wait_s)
            except Exception:
                log.exception("event handler failed; the batch will be retried")
                stop.wait(retry_wait_s)

    def assigned(self) -> bool:
        """Whether the group has given this member partitions (it joined)."""
        return bool(self._consumer.assignment())

    def stats(self) -> dict[str, int]:
        """records read, events returned, duplicates / skipped / invalid left out, commits, retries."""
        return dict(self._counts)

    def close(self) -> None:
        """Leave the group without committing what was not committed."""
        self._consumer.close(autocommit=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
