"""Keeps every task's champion (an ONNX specialist or an FM adapter) at the
registry's `champion`: a ModelEvent on Kafka triggers a check at once; polling the
alias is the fallback when an event is missed or Kafka is down. New models load in
the background and swap atomically (`SpecialistSlots.swap`); a version that fails
to load is not retried until the alias moves again.

Each replica reads the model events in a consumer group of its own (every replica
must see every event), named after its place, not drawn at random: a restarted
replica takes its predecessor's group and offsets, instead of leaving one more group
behind and rereading the topic from the start."""

from __future__ import annotations

import logging
import socket
import threading
import time

from protege.schemas import ModelEvent
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings

log = logging.getLogger(__name__)


class ChampionWatcher:
    def __init__(
        self,
        slots: SpecialistSlots,
        settings: Settings,
        registry=None,
        replica_slot: int = 0,
    ):
        """`replica_slot`: this replica's number among the live ones on this host (the
        event producer's spool slot): with the host name, its consumer group."""
        self.slots = slots
        self.settings = settings
        self.group_id = f"{settings.namespace}-gateway-{socket.gethostname()}-{replica_slot}"
        self._registry = registry
        self._failed: dict[str, str] = {}  # task -> version that failed to load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registry(self):
        if self._registry is None:  # mlflow is a heavy import: only when first needed
            from protege.registry import Registry

            self._registry = Registry.from_settings(self.settings)
        return self._registry

    def check(self, task: str) -> bool:
        """Load the champion of `task` if it is not what serves; True when swapped."""
        version = self.registry.alias_version(task)
        if version is None or self.slots.champion_version(task) == version:
            return False
        if self._failed.get(task) == version:
            return False
        try:
            folder = self.registry.download(task, version=version)
        except Exception as exc:  # the artifact store may be briefly unreachable: retry later
            log.warning("could not download %s champion %s: %r", task, version, exc)
            return False
        if self.slots.swap(task, folder):
            self._failed.pop(task, None)
            return True
        self._failed[task] = version
        return False

    def check_all(self) -> None:
        for task in self.slots.tasks:
            try:
                self.check(task)
            except Exception:  # one task's registry trouble must not stop the others
                log.exception("champion check failed for %s", task)

    def start(self) -> ChampionWatcher:
        self._thread = threading.Thread(
            target=self._run, name="protege-champion-watcher", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        consumer = self._model_events()
        next_poll = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_poll:
                self.check_all()
                next_poll = time.monotonic() + self.settings.model_poll_s
            if consumer is None:
                self._stop.wait(min(1.0, self.settings.model_poll_s))
                continue
            try:
                events = consumer.poll(timeout_s=1.0)
                consumer.commit()
            except Exception as exc:  # broker down: polling the alias covers us
                log.warning("model-event consumer: %r", exc)
                self._stop.wait(1.0)
                continue
            for task in {e.task for e in events if isinstance(e, ModelEvent)}:
                if task in self.slots.tasks:
                    self.check(task)
        if consumer is not None:
            consumer.close()  # leave the group now; the next replica in this slot takes it

    def _model_events(self):
        if not self.settings.kafka_bootstrap:
            return None
        from protege.events.consumer import EventConsumer

        try:
            return EventConsumer(
                self.settings, group_id=self.group_id, topics=[self.settings.kafka_topic_models]
            )
        except Exception as exc:
            log.warning("no model events (polling only): %r", exc)
            return None
