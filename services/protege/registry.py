"""The model registry: MLflow runs, one registered model per task, aliases.

- Each training round is an MLflow run in experiment `<namespace>-<task>`
  (`Settings.namespace`, default `protege`): parameters,
  the LF report, the label-model choice, metrics and the specialist folder (ONNX,
  `model.json`, tokenizer) as artifacts under `specialist/`.
- Each run's specialist is a version of the registered model `<namespace>-<task>`;
  deployments with namespaces of their own share an MLflow server without meeting.
- Alias `champion` is what serves; `challenger` is the latest candidate.
  Promotion and rollback move `champion` (instant) and return a `ModelEvent`;
  the previous champions are kept in a tag so that rollback needs no argument.
- `download(task, alias)` gives serving a local folder, cached per version
  (versions are immutable).

The default store is SQLite with a local artifact folder; a tracking URI
(`http://mlflow:5000`, `postgresql://...`) switches to production by config only.

Alias moves (promote, rollback) are read-modify-writes of the alias and the history
tag: they run under a per-task lock (threads, and processes on one machine), and a
promotion may name the champion it expects (`expected_champion`): a round that judged
its candidate against version 3 does not promote it over a version 4 that an operator
promoted meanwhile (`ChampionMoved`; the later decision stands).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protege.artifact import META_FILE, SpecialistMeta, update_meta
from protege.schemas import ModelAction, ModelEvent, ModelRef
from protege.settings import DEFAULT_NAMESPACE

# No telemetry or git lookups from a service that may have no network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACT_DIR = "specialist"
HISTORY_TAG = "protege.champion_history"  # JSON list of earlier champions, newest last
HISTORY_LENGTH = 50  # rollbacks reach this far back without naming a version
# On each version: why it was promoted, rolled back to or rejected (JSON list), and when.
REASONS_TAG = "protege.reasons"
DECIDED_TAG = "protege.decided_at"

Publish = Callable[[ModelEvent], object]


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why."""


class ChampionMoved(RegistryError):
    """The champion is not the one the caller decided against: someone moved it since."""


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def alias_lock(tracking_uri: str, task: str):
    """Serialize alias moves of `task`: a thread lock, and a file lock (flock) that
    processes on this machine share. Processes on other machines (a remote tracking
    server) are not covered; `expected_champion` still refuses a stale promotion."""
    key = hashlib.sha256(f"{tracking_uri}\0{task}".encode()).hexdigest()[:24]
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.Lock())
    folder = Path(tempfile.gettempdir()) / "protege-registry-locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    with lock:
        fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def registered_name(task: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The task's registered model and experiment in MLflow."""
    return f"{namespace}-{task}"


@dataclass(frozen=True)
class ModelVersionInfo:
    task: str
    version: str
    model: str  # family, e.g. "tfidf-lr"
    aliases: list[str]
    status: str  # "candidate", "promoted", "rejected", ...
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = 0.0  # unix seconds
    run_id: str = ""
    reasons: list[str] = field(default_factory=list)  # of its last decision
    decided: float | None = None  # unix seconds of its last decision

    @property
    def ref(self) -> ModelRef:
        return ModelRef(model=self.model, version=self.version)


class Registry:
    """Model registry over an MLflow tracking store.

    >>> registry = Registry("sqlite:////tmp/mlflow.db", "file:///tmp/mlartifacts")  # doctest: +SKIP
    >>> version = registry.log_candidate("youtube-spam", folder, metrics={...})  # doctest: +SKIP
    >>> event = registry.promote("youtube-spam", version)  # doctest: +SKIP
    >>> registry.download("youtube-spam")  # doctest: +SKIP
    PosixPath('~/.protege/models/protege-youtube-spam/1')
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | None = None,
        cache_dir: Path | str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.namespace = namespace
        self.artifact_root = artifact_root.rstrip("/") if artifact_root else None
        self.cache_dir = (
            Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "protege-models"
        )
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings) -> Registry:
        return cls(
            settings.mlflow_tracking_uri,
            settings.mlflow_artifact_root,
            settings.models_dir,
            namespace=settings.namespace,
        )

    def registered_name(self, task: str) -> str:
        return registered_name(task, self.namespace)

    # ------------------------------------------------------------------ writing

    def _experiment_id(self, task: str) -> str:
        name = self.registered_name(task)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = f"{self.artifact_root}/{name}" if self.artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another improver
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _ensure_registered_model(self, task: str) -> None:
        from mlflow.exceptions import MlflowException

        name = self.registered_name(task)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name,
                    tags={"protege.task": task},
                    description=f"Protégé specialist for task {task}",
                )
            except MlflowException:  # created concurrently
                self.client.get_registered_model(name)

    def log_candidate(
        self,
        task: str,
        folder: Path | str,
        *,
        params: Mapping[str, object] | None = None,
        metrics: Mapping[str, float | None] | None = None,
        lf_report: Mapping | None = None,
        label_model: str | Mapping | None = None,
        report: Mapping | None = None,
        set_challenger: bool = True,
    ) -> str:
        """Record a training round and register its specialist; returns the new version.

        The folder's `model.json` gets the registry's version before it is uploaded, so
        that the served model names itself (`served_by`) as the registry does."""
        from mlflow.entities import Metric, Param, RunTag

        folder = Path(folder)
        meta = SpecialistMeta.read(folder)
        self._ensure_registered_model(task)
        run = self.client.create_run(
            self._experiment_id(task),
            run_name=f"{task}-{meta.model}",
            tags={"protege.task": task, "protege.model": meta.model},
        )
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            label_model_name = (
                label_model
                if isinstance(label_model, str)
                else label_model.get("name")
                if label_model
                else None
            )
            all_params = {**(params or {}), "model": meta.model, "kind": meta.kind}
            if meta.base_model:  # an fm-adapter: the FM it plugs into
                all_params["base_model"] = meta.base_model
            if label_model_name:
                all_params["label_model"] = label_model_name
            self.client.log_batch(
                run_id,
                metrics=[
                    Metric(_key(k), float(v), now, 0)
                    for k, v in (metrics or {}).items()
                    if isinstance(v, (int, float)) and not math.isnan(v)
                ],
                params=[Param(_key(k), str(v)[:6000]) for k, v in all_params.items()],
                tags=[RunTag("protege.labels", json.dumps(meta.labels)[:5000])],
            )
            if lf_report is not None:
                self.client.log_dict(run_id, _jsonable(lf_report), "lf_report.json")
            if isinstance(label_model, Mapping):
                self.client.log_dict(run_id, _jsonable(label_model), "label_model.json")
            if report is not None:
                self.client.log_dict(run_id, _jsonable(report), "report.json")
            source = f"{run.info.artifact_uri}/{ARTIFACT_DIR}"
            version = self.client.create_model_version(
                self.registered_name(task),
                source,
                run_id=run_id,
                tags={"protege.model": meta.model, "protege.status": "candidate"},
            ).version
            try:
                with tempfile.TemporaryDirectory(prefix="protege-upload-") as tmp:
                    staged = Path(tmp) / ARTIFACT_DIR
                    shutil.copytree(folder, staged)
                    update_meta(staged, version=str(version))
                    self.client.log_artifacts(run_id, str(staged), ARTIFACT_DIR)
            except Exception:
                self.client.delete_model_version(self.registered_name(task), version)
                raise
            if set_challenger:
                self.client.set_registered_model_alias(
                    self.registered_name(task), CHALLENGER, version
                )
            self.client.set_terminated(run_id, "FINISHED")
            return str(version)
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise

    # ------------------------------------------------------------------ aliases

    def _version(self, task: str, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.registered_name(task), str(version))
        except MlflowException as exc:
            raise RegistryError(f"{task}: no version {version}") from exc

    def alias_version(self, task: str, alias: str = CHAMPION) -> str | None:
        """The version an alias points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.registered_name(task))
        except MlflowException:
            return None
        version = model.aliases.get(alias)
        return None if version is None else str(version)

    def _history(self, task: str) -> list[str]:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.registered_name(task))
        except MlflowException as exc:
            raise RegistryError(f"{task}: no model registered yet") from exc
        return json.loads(model.tags.get(HISTORY_TAG, "[]"))

    def _set_history(self, task: str, history: list[str]) -> None:
        self.client.set_registered_model_tag(
            self.registered_name(task), HISTORY_TAG, json.dumps(history[-HISTORY_LENGTH:])
        )

    def _event(
        self,
        task: str,
        version: str,
        action: ModelAction,
        reasons: list[str],
        metrics: Mapping | None,
    ) -> ModelEvent:
        mv = self._version(task, version)
        run_metrics = self.client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        payload = {k: v for k, v in run_metrics.items() if "." not in k}
        payload.update(metrics or {})
        return ModelEvent(
            task=task,
            model=ModelRef(model=mv.tags.get("protege.model", "unknown"), version=str(version)),
            action=action,
            metrics=payload,
            reasons=list(reasons),
        )

    def _move_champion(
        self,
        task: str,
        version: str,
        action: ModelAction,
        reasons: list[str],
        metrics: Mapping | None,
        publish: Publish | None,
        remember_previous: bool,
        expected_champion: str | None = None,
    ) -> ModelEvent:
        """Call with the task's alias_lock held."""
        name = self.registered_name(task)
        self._version(task, version)
        previous = self.alias_version(task, CHAMPION)
        if expected_champion is not None and (previous or "") != expected_champion:
            raise ChampionMoved(
                f"{task}: the champion is version {previous}, not {expected_champion} as "
                "when this decision was made; it stands"
            )
        if remember_previous and previous and previous != str(version):
            self._set_history(task, [*self._history(task), previous])
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        if self.alias_version(task, CHALLENGER) == str(version):
            self.client.delete_registered_model_alias(name, CHALLENGER)
        self.client.set_model_version_tag(name, str(version), "protege.status", action.value)
        was = f"version {previous}" if previous else "none"
        default_reason = f"{action.value}; the champion was {was}"
        event = self._event(task, str(version), action, reasons or [default_reason], metrics)
        self._record_decision(task, str(version), event)
        log.info("%s: champion %s -> %s (%s)", task, previous, version, action.value)
        if publish is not None:
            publish(event)
        return event

    def promote(
        self,
        task: str,
        version: str | None = None,
        *,
        reasons: list[str] | None = None,
        metrics: Mapping | None = None,
        publish: Publish | None = None,
        expected_champion: str | None = None,
    ) -> ModelEvent:
        """Make `version` (default: the challenger) the champion. With
        `expected_champion` ("" for none), raise ChampionMoved unless that is the
        champion now."""
        with alias_lock(self.tracking_uri, self.registered_name(task)):
            version = version or self.alias_version(task, CHALLENGER)
            if version is None:
                raise RegistryError(f"{task}: no version given and no {CHALLENGER}")
            return self._move_champion(
                task,
                str(version),
                ModelAction.promoted,
                reasons or [],
                metrics,
                publish,
                remember_previous=True,
                expected_champion=expected_champion,
            )

    def rollback(
        self,
        task: str,
        version: str | None = None,
        *,
        reasons: list[str] | None = None,
        publish: Publish | None = None,
    ) -> ModelEvent:
        """Make `version` (default: the champion before the current one) the champion."""
        with alias_lock(self.tracking_uri, self.registered_name(task)):
            return self._rollback(task, version, reasons, publish)

    def _rollback(
        self, task: str, version: str | None, reasons: list[str] | None, publish: Publish | None
    ) -> ModelEvent:
        history = self._history(task)
        current = self.alias_version(task, CHAMPION)
        if version is None:
            while history and history[-1] == current:
                history.pop()
            if not history:
                raise RegistryError(f"{task}: no earlier champion to roll back to")
            version = history.pop()
        else:
            history = [v for v in history if v != str(version)]
        self._set_history(task, history)
        if current is not None:  # a rolled-back version may be rolled forward again
            self.client.set_model_version_tag(
                self.registered_name(task), current, "protege.status", "rolled_back_from"
            )
        return self._move_champion(
            task,
            str(version),
            ModelAction.rolled_back,
            reasons or [],
            None,
            publish,
            remember_previous=False,
        )

    def reject(
        self,
        task: str,
        version: str,
        reasons: list[str],
        *,
        metrics: Mapping | None = None,
        publish: Publish | None = None,
    ) -> ModelEvent:
        """Record a gate rejection on the version; the champion is untouched."""
        name = self.registered_name(task)
        self.client.set_model_version_tag(name, str(version), "protege.status", "rejected")
        event = self._event(task, str(version), ModelAction.rejected, reasons, metrics)
        self._record_decision(task, str(version), event)
        if publish is not None:
            publish(event)
        return event

    def _record_decision(self, task: str, version: str, event: ModelEvent) -> None:
        name = self.registered_name(task)
        self.client.set_model_version_tag(
            name, version, REASONS_TAG, json.dumps(event.reasons)[:5000]
        )
        self.client.set_model_version_tag(name, version, DECIDED_TAG, repr(event.timestamp))

    # ------------------------------------------------------------------ reading

    def champion_history(self, task: str) -> list[str]:
        """The earlier champions, oldest first (what a rollback goes back to)."""
        try:
            return self._history(task)
        except RegistryError:
            return []

    def list(self, task: str) -> list[ModelVersionInfo]:
        """Every version of the task's model, newest first."""
        from mlflow.exceptions import MlflowException

        name = self.registered_name(task)
        try:
            aliases = self.client.get_registered_model(name).aliases
        except MlflowException:
            return []
        by_version: dict[str, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(str(v), []).append(alias)
        infos = []
        for mv in self.client.search_model_versions(f"name='{name}'"):
            metrics = self.client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            infos.append(
                ModelVersionInfo(
                    task=task,
                    version=str(mv.version),
                    model=mv.tags.get("protege.model", "?"),
                    aliases=sorted(by_version.get(str(mv.version), [])),
                    status=mv.tags.get("protege.status", "?"),
                    metrics=dict(metrics),
                    created=mv.creation_timestamp / 1000.0,
                    run_id=mv.run_id or "",
                    reasons=_reasons(mv.tags.get(REASONS_TAG)),
                    decided=float(mv.tags[DECIDED_TAG]) if DECIDED_TAG in mv.tags else None,
                )
            )
        return sorted(infos, key=lambda i: int(i.version), reverse=True)

    def download(
        self,
        task: str,
        alias: str = CHAMPION,
        *,
        version: str | None = None,
        dst: Path | str | None = None,
    ) -> Path:
        """A local folder holding the specialist that `alias` (or `version`) names.

        Cached under `cache_dir/<registered name>/<version>`: versions never change, so a
        folder that is there is reused (another namespace's version 1 is another folder).
        Raises RegistryError when the alias is unset."""
        version = version or self.alias_version(task, alias)
        if version is None:
            raise RegistryError(f"{task}: no model has alias {alias!r}")
        mv = self._version(task, version)
        target = Path(dst) if dst else self.cache_dir / self.registered_name(task) / str(version)
        if (target / META_FILE).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
            local = self.client.download_artifacts(mv.run_id, ARTIFACT_DIR, tmp)
            try:
                os.replace(local, target)
            except OSError:  # another replica won the race, or dst exists
                if not (target / META_FILE).exists():
                    shutil.copytree(local, target, dirs_exist_ok=True)
        return target


def _reasons(tag: str | None) -> list[str]:
    """A version's reasons tag (cut at 5,000 characters, so perhaps not whole JSON)."""
    if not tag:
        return []
    try:
        return [str(r) for r in json.loads(tag)]
    except ValueError:
        return [tag]


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, `_-. /`; labels may hold anything else."""
    return re.sub(r"[^\w\-. /]", "_", str(name))[:250]


def _jsonable(value):
    """Round-trip through JSON (numpy numbers and such become plain ones)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value):
    try:
        return value.tolist()  # numpy arrays and scalars
    except AttributeError:
        return str(value)
