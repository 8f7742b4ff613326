"""The two Ray Serve deployments. Heavy state is built once in `__init__`; request
methods are short. The specialist runs inside the Gateway replica, so the
specialist path makes no DeploymentHandle hop; only the FM is a separate
deployment (it wants a GPU in a cluster)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from protege.foundation.backend import create_backend
from protege.serving.adapters import AdapterResolver
from protege.serving.api import build_api
from protege.serving.auth import ApiKeys
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.foundation_client import HandleFoundation, prompt_spec
from protege.serving.gateway import GatewayCore
from protege.serving.improver_client import ImproverClient
from protege.serving.metrics import EventLogMetrics, ServingMetrics
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings

log = logging.getLogger(__name__)

ScoreItem = tuple[str, str, str | None, str | None]  # task, text, prompt LF, adapter


@serve.deployment(max_ongoing_requests=256)
class FoundationModel:
    """texts -> label probabilities, batched across concurrent callers: by the base
    model, or by a task's adapter named in the call (downloaded from the registry on
    its first call, so adapters promoted later serve without a restart)."""

    def __init__(self, args: dict):
        settings = Settings(**args)  # secrets from this process's environment
        self.tasks = settings.load_tasks()
        self.backend = create_backend(settings)
        self.adapters = AdapterResolver(settings)
        self._score_batch.set_max_batch_size(settings.fm_max_batch)

    def info(self) -> dict:
        return self.backend.ref.model_dump()

    async def score(
        self, task: str, text: str, prompt: str | None = None, adapter: str | None = None
    ) -> list[float]:
        """`prompt`: a prompt LF's name (the task's prompt when None); `adapter`: an
        adapter name, `task@vN` (the base model when None)."""
        prompt_spec(self.tasks[task], prompt)  # an unknown name fails alone, not its batch
        row = await self._score_batch((task, text, prompt, adapter))
        if isinstance(row, Exception):
            raise row
        return row

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[ScoreItem]) -> list[list[float] | Exception]:
        """Each (task, prompt, adapter) group scored together, the groups concurrently
        (vLLM batches them on the GPU; transformers takes them in turn); a group that
        fails (e.g. an unknown adapter) fails its own calls only."""
        groups: dict[tuple[str, str | None, str | None], list[int]] = {}
        for i, (task, _, prompt, adapter) in enumerate(items):
            groups.setdefault((task, prompt, adapter), []).append(i)
        results = await asyncio.gather(
            *(
                asyncio.to_thread(self._predict, task, [items[i][1] for i in rows], prompt, adapter)
                for (task, prompt, adapter), rows in groups.items()
            ),
            return_exceptions=True,  # handed to each group's callers, raised in `score`
        )
        out: list[list[float] | Exception | None] = [None] * len(items)
        for rows, probs in zip(groups.values(), results):
            for k, i in enumerate(rows):
                out[i] = probs if isinstance(probs, Exception) else np.asarray(probs)[k].tolist()
        return out

    def _predict(
        self, task: str, texts: list[str], prompt: str | None, adapter: str | None
    ) -> np.ndarray:
        spec = self.tasks[task]
        return self.backend.predict_proba(
            spec,
            texts,
            prompt_spec(spec, prompt),
            self.adapters.resolve(adapter) if adapter else None,
        )


@serve.deployment(max_ongoing_requests=256)
@serve.ingress()
class Gateway:
    """The FastAPI ingress: auth, validation, routing, the in-process specialists."""

    def __init__(self, args: dict, foundation):
        settings = Settings(**args)  # secrets from this process's environment
        tasks = settings.load_tasks()
        self.specialists = SpecialistSlots(tasks, settings)
        self.specialists.load_local()
        self.events = event_producer(settings)
        self.core = GatewayCore(
            tasks,
            HandleFoundation(foundation),
            self.specialists,
            PredictionIds.from_settings(settings),
            metrics=ServingMetrics(),
            publish=self.events.publish if self.events else None,
            event_stats=self.events.stats if self.events else None,
            shadow_max_inflight=settings.shadow_max_inflight,
            fm_deadline_s=settings.fm_deadline_s,
        )
        self.api_keys = ApiKeys.from_settings(settings)
        self.settings = settings
        self.improver = (
            ImproverClient(
                settings.improver_url,
                settings.improver_timeout_s,
                settings.improver_report_timeout_s,
            )
            if settings.improver_url
            else None
        )
        self.watcher = None
        if settings.watch_registry and settings.mlflow_tracking_uri:
            self.watcher = ChampionWatcher(
                self.specialists,
                settings,
                replica_slot=self.events.slot if self.events is not None else 0,
            ).start()

    def __del__(self):
        if self.watcher is not None:
            self.watcher.stop()
        if self.events is not None:
            self.events.close(timeout=5)

    def __serve_build_asgi_app__(self):
        return build_api(self.core, self.api_keys, self.watcher, self.settings, self.improver)


def event_producer(settings: Settings):
    """The Kafka producer when a broker is configured (replicas on one node each take
    their own spool slot, and adopt what dead ones left behind)."""
    if not settings.kafka_bootstrap:
        log.warning("PROTEGE_KAFKA_BOOTSTRAP is unset: predictions and feedback are not logged")
        return None
    from protege.events.producer import EventProducer

    # kafka-python logs every failed reconnect at ERROR; the producer reports outages itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return EventProducer(settings, on_count=EventLogMetrics().count).start()
