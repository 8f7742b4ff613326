"""The improver's intake: prediction and feedback events from Kafka into the example store.

Each batch is stored in one transaction and only then are its offsets committed
(:class:`~protege.events.consumer.EventConsumer` commits after the handler returns).
A crash between the two redelivers the batch, and the store skips the event ids it
already has: a restart resumes with nothing lost and nothing counted twice.

Example
-------
>>> ingestor = Ingestor(ExampleStore(settings.store_url), settings)   # doctest: +SKIP
>>> ingestor.run(stop=threading.Event())                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time

from protege.improver.data.store import ExampleStore
from protege.schemas import Event, FeedbackEvent, PredictionEvent
from protege.settings import Settings

log = logging.getLogger(__name__)


class Ingestor:
    """Consumes `protege.predictions` and `protege.feedback` into `store`.

    Parameters
    ----------
    store : where events go.
    settings : Kafka connection and topic names.
    group_id : the consumer group (one per improver deployment; default
        `settings.improver_group`: the improver must see every event, whoever else reads them).
    max_records : most events per batch (one store transaction each).
    consumer : an EventConsumer to use instead of building one (tests).
    """

    def __init__(
        self,
        store: ExampleStore,
        settings: Settings,
        group_id: str | None = None,
        max_records: int = 500,
        consumer=None,
    ):
        self.store = store
        self.settings = settings
        if consumer is None:
            from protege.events.consumer import EventConsumer

            topics = [settings.kafka_topic_predictions, settings.kafka_topic_feedback]
            consumer = EventConsumer(
                settings,
                group_id=group_id or settings.improver_group,
                topics=topics,
                max_records=max_records,
            )
        self.consumer = consumer
        self.stored = 0
        self.already_stored = 0
        self.ignored = 0
        self.joined = False  # the consumer group gave it partitions: it is taking events

    def handle(self, events: list[Event]) -> int:
        """Store one batch; returns when it is committed to the store."""
        wanted = [e for e in events if isinstance(e, (PredictionEvent, FeedbackEvent))]
        self.ignored += len(events) - len(wanted)
        new = self.store.record_many(wanted)
        self.stored += new
        self.already_stored += len(wanted) - new
        if len(wanted) - new:
            log.info("%d redelivered events were already stored", len(wanted) - new)
        return new

    def run(
        self,
        stop: threading.Event | None = None,
        idle_exit_s: float | None = None,
        poll_timeout_s: float = 0.5,
    ) -> dict[str, int]:
        """Consume until `stop` is set, or until nothing arrived for `idle_exit_s`."""
        stop = stop or threading.Event()
        last_event = time.monotonic()
        while not stop.is_set():
            try:
                handled = self.consumer.process(self.handle, poll_timeout_s)
            except Exception:
                # The batch was not committed and will come again; the store dedupes.
                log.exception("storing a batch failed; retrying")
                stop.wait(1.0)
                continue
            if not self.joined and self.consumer.assigned():
                self.joined = True
                log.info("intake joined its consumer group")
            if handled:
                last_event = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_event > idle_exit_s:
                break
        return self.stats()

    def stats(self) -> dict[str, int]:
        return {
            "stored": self.stored,
            "already_stored": self.already_stored,
            "ignored": self.ignored,
            **{f"consumer_{k}": v for k, v in self.consumer.stats().items()},
        }

    def close(self) -> None:
        self.consumer.close()
