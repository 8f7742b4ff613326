"""The improver's decisions as the demo sees them: ModelEvents (promoted, rejected,
rolled back) read from the models topic in a background thread, into the record.

The demo has its own consumer group, so it takes nothing from the gateways or the
improver, and reads from the earliest offset: with a fresh broker that is exactly
this run's events.
"""

from __future__ import annotations

import logging
import threading
import uuid

from protege.demo.record import Decision, RunRecord
from protege.schemas import ModelEvent
from protege.settings import Settings

log = logging.getLogger(__name__)

# Tansu delays a new group's first join by about half the session timeout.
SESSION_TIMEOUT_MS = 2000


def decision_of(event: ModelEvent, origin: float) -> Decision:
    """A ModelEvent as a Decision timed from `origin` (wall-clock seconds)."""
    accuracy = event.metrics.get("accuracy")
    return Decision(
        t=max(0.0, event.timestamp - origin),
        action=event.action.value,
        model=event.model.model,
        version=event.model.version,
        accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None,
        reasons=tuple(event.reasons),
    )


class ModelEventReader:
    """Adds each ModelEvent of `task` to `record` until `stop()`."""

    def __init__(self, settings: Settings, task: str, record: RunRecord) -> None:
        self.settings = settings.model_copy(update={"kafka_session_timeout_ms": SESSION_TIMEOUT_MS})
        self.task = task
        self.record = record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ModelEventReader:
        self._thread = threading.Thread(target=self._run, name="demo-model-events", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from protege.events.consumer import EventConsumer

        try:
            consumer = EventConsumer(
                self.settings,
                group_id=f"protege-demo-{uuid.uuid4().hex[:8]}",
                topics=[self.settings.kafka_topic_models],
            )
        except Exception:
            log.exception("cannot read model events")
            return
        try:
            consumer.run(self._handle, stop=self._stop)
        finally:
            consumer.close()

    def _handle(self, events: list) -> None:
        for event in events:
            if isinstance(event, ModelEvent) and event.task == self.task:
                self.record.add_decision(decision_of(event, self.record.started_at))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
