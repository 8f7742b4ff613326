"""The champion of each task, swappable at run time: a new ONNX specialist loads in
the background and replaces the old one in a single assignment; a model that fails
to load leaves the old one serving and its error visible in /readyz.

A champion of kind fm-adapter is no ONNX graph: the slot records the adapter
(`adapters`), and the task's FM calls go to it (the FM deployment loads its files);
an ONNX specialist already live stays in front of it. Swapping an ONNX version in
again (a rollback) drops the adapter."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from protege.artifact import (
    ADAPTER_KIND,
    META_FILE,
    Specialist,
    SpecialistLoadError,
    SpecialistMeta,
    adapter_name,
)
from protege.schemas import AdapterRef
from protege.serving.adapters import UnknownAdapter, checked_adapter_folder
from protege.serving.batching import MicroBatcher
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class LiveSpecialist:
    model: Specialist
    batcher: MicroBatcher


class SpecialistSlots:
    def __init__(self, tasks: dict[str, TaskSpec], settings: Settings):
        self.tasks = tasks
        self.settings = settings
        self.live: dict[str, LiveSpecialist] = {}
        self.adapters: dict[str, AdapterRef] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()  # one load at a time per replica

    def local_folder(self, task: str) -> Path:
        return self.settings.models_dir / task / "current"

    def load_local(self) -> None:
        """Load every task's specialist found under the models folder."""
        for task in self.tasks:
            folder = self.local_folder(task)
            if (folder / META_FILE).exists():
                self.swap(task, folder)

    def swap(self, task: str, folder: Path) -> bool:
        """Make `folder` the task's champion; False (old one kept) on error."""
        with self._lock:
            try:
                meta = SpecialistMeta.read(folder)
                if meta.kind == ADAPTER_KIND:
                    self.adapters[task] = self._checked_adapter(task, folder, meta)
                    self.errors.pop(task, None)
                    log.info("FM calls for %s now go to adapter %s", task, self.adapters[task].name)
                    return True
                model = Specialist(folder, expected_labels=self.tasks[task].label_names)
            except SpecialistLoadError as exc:
                self.errors[task] = str(exc)
                log.error("champion for %s failed to load; keeping the current one: %s", task, exc)
                return False
            batcher = MicroBatcher(
                model.predict_proba,
                self.settings.specialist_max_batch,
                self.settings.specialist_batch_wait_s,
            )
            self.live[task] = LiveSpecialist(model, batcher)  # the atomic swap
            self.adapters.pop(task, None)
            self.errors.pop(task, None)
            log.info("specialist for %s is now %s %s", task, model.ref.model, model.ref.version)
            return True

    def _checked_adapter(self, task: str, folder: Path, meta: SpecialistMeta) -> AdapterRef:
        if sorted(meta.labels) != sorted(self.tasks[task].label_names):
            raise SpecialistLoadError(
                f"{folder}: labels {meta.labels} do not match the task's "
                f"{self.tasks[task].label_names}"
            )
        name = adapter_name(task, meta.version)
        try:
            checked_adapter_folder(name, folder)
        except UnknownAdapter as exc:
            raise SpecialistLoadError(str(exc)) from None
        return AdapterRef(name=name, version=meta.version, base_model=meta.base_model)

    def get(self, task: str) -> LiveSpecialist | None:
        return self.live.get(task)

    def adapter(self, task: str) -> AdapterRef | None:
        """The task's champion adapter, which answers its FM calls; None: the base model."""
        return self.adapters.get(task)

    def champion_version(self, task: str) -> str | None:
        """The version serving as the task's champion: its adapter's, else its specialist's."""
        adapter = self.adapters.get(task)
        if adapter is not None:
            return adapter.version
        live = self.live.get(task)
        return live.model.meta.version if live else None
