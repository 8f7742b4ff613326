"""The specialist of each task, swappable at run time: a new model loads in the
background and replaces the old one in a single assignment; a model that fails to
load leaves the old one serving and its error visible in /readyz."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from protege.artifact import META_FILE, Specialist, SpecialistLoadError
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
        """Load `folder` and make it the task's specialist; False (old one kept) on error."""
        with self._lock:
            try:
                model = Specialist(folder, expected_labels=self.tasks[task].label_names)
            except SpecialistLoadError as exc:
                self.errors[task] = str(exc)
                log.error(
                    "specialist for %s failed to load; keeping the current one: %s", task, exc
                )
                return False
            batcher = MicroBatcher(
                model.predict_proba,
                self.settings.specialist_max_batch,
                self.settings.specialist_batch_wait_s,
            )
            self.live[task] = LiveSpecialist(model, batcher)  # the atomic swap
            self.errors.pop(task, None)
            log.info("specialist for %s is now %s %s", task, model.ref.model, model.ref.version)
            return True

    def get(self, task: str) -> LiveSpecialist | None:
        return self.live.get(task)
