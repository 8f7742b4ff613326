"""Adapter names to adapter folders: an FM call names the adapter it wants
(`task@vN`, `artifact.adapter_name`), and whoever holds the FM backend (the
FoundationModel deployment, or the gateway's in-process FM) downloads that task's
registry version once and keeps the folder, so that any number of adapters serve
without a restart and without being configured anywhere."""

from __future__ import annotations

import threading
from pathlib import Path

from protege.artifact import (
    ADAPTER_DIR,
    ADAPTER_KIND,
    SpecialistLoadError,
    SpecialistMeta,
    parse_adapter_name,
)
from protege.foundation.backend import Adapter
from protege.settings import Settings


class UnknownAdapter(LookupError):
    """An adapter name that names no fm-adapter version in the registry."""


class AdapterResolver:
    """Resolves and caches adapter names; thread-safe (FM calls run on worker threads)."""

    def __init__(self, settings: Settings, registry=None):
        self.settings = settings
        self._registry = registry
        self._known: dict[str, Adapter] = {}
        self._lock = threading.Lock()  # one download at a time

    @property
    def registry(self):
        if self._registry is None:  # mlflow is a heavy import: only once an adapter is asked for
            from protege.registry import Registry

            self._registry = Registry.from_settings(self.settings)
        return self._registry

    def resolve(self, name: str) -> Adapter:
        """The adapter and its local folder; UnknownAdapter when the name resolves to none."""
        known = self._known.get(name)
        if known is not None:
            return known
        try:
            task, version = parse_adapter_name(name)
        except ValueError as exc:
            raise UnknownAdapter(str(exc)) from None
        with self._lock:
            if name in self._known:
                return self._known[name]
            from protege.registry import RegistryError

            try:
                folder = self.registry.download(task, version=version)
            except RegistryError as exc:
                raise UnknownAdapter(f"adapter {name!r}: {exc}") from None
            self._known[name] = Adapter(name, checked_adapter_folder(name, folder))
            return self._known[name]


def checked_adapter_folder(name: str, folder: Path) -> Path:
    """`folder` when it holds an fm-adapter's files, else UnknownAdapter saying why."""
    try:
        meta = SpecialistMeta.read(folder)
    except SpecialistLoadError as exc:
        raise UnknownAdapter(f"adapter {name!r}: {exc}") from None
    if meta.kind != ADAPTER_KIND:
        raise UnknownAdapter(
            f"adapter {name!r}: version {meta.version} of {meta.task} is a {meta.kind!r} "
            "model, not an fm-adapter"
        )
    if not (folder / ADAPTER_DIR / "adapter_config.json").exists():
        raise UnknownAdapter(f"adapter {name!r}: no {ADAPTER_DIR}/adapter_config.json in {folder}")
    return folder
