"""FM adapters served beside the base model, through the in-process gateway, the real
SmolLM2 and a real MLflow registry on SQLite: a task whose champion is an adapter has
its FM calls (answers, escalations, shadow runs) answered by that adapter, other tasks
by the base model, and a rollback to an ONNX version stops using it. The OpenAI
backend asks for an adapter by its model name, here of `protege fm-server`.

Needs the transformers backend's adapter scoring (branch `lora`)."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest

from adapter_builder import build_adapter
from protege.artifact import ADAPTER_KIND, adapter_name, update_meta
from protege.foundation.backend import Adapter
from protege.foundation.openai_backend import OpenAIBackend
from protege.foundation.server import adapter_folders, build_fm_server
from protege.foundation.transformers_backend import TransformersBackend
from protege.registry import Registry
from protege.schemas import ModelRef, PredictionEvent, Route
from protege.serving.adapters import AdapterResolver, UnknownAdapter
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.foundation_client import LocalFoundation
from protege.serving.gateway import GatewayCore
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings
from protege.taskspec import Policy, RoutingSpec
from specialist_builder import build_youtube_specialist
from test_foundation import serve_on_loopback

TASK = "youtube-spam"
OTHER = "youtube-other"  # the same task under another name: no adapter of its own
TEXT = "hmm ok"
ADAPTER = adapter_name(TASK, "2")


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend.from_settings(Settings())


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("adapters-home"))


@pytest.fixture(scope="module")
def registry(settings, tmp_path_factory) -> Registry:
    """Version 1: an ONNX specialist (the champion); version 2: an adapter."""
    registry = Registry.from_settings(settings)
    built = tmp_path_factory.mktemp("built")
    labels = settings.load_tasks()[TASK].label_names
    assert (
        registry.log_candidate(TASK, build_youtube_specialist(built / "onnx", per_label=10)) == "1"
    )
    assert registry.log_candidate(TASK, build_adapter(built / "lora", TASK, labels)) == "2"
    registry.promote(TASK, "1")
    return registry


@pytest.fixture(scope="module")
def foundation(backend, settings, registry) -> LocalFoundation:
    return LocalFoundation(backend, AdapterResolver(settings, registry))


def make_core(settings, registry, foundation, routing: RoutingSpec):
    tasks = settings.load_tasks()
    tasks[TASK] = tasks[TASK].model_copy(update={"routing": routing})
    tasks[OTHER] = tasks[TASK].model_copy(
        update={"name": OTHER, "routing": RoutingSpec(policy=Policy.foundation_only)}
    )
    slots = SpecialistSlots(tasks, settings)
    watcher = ChampionWatcher(slots, settings, registry=registry)
    events: list = []
    core = GatewayCore(
        tasks, foundation, slots, PredictionIds(b"0123456789abcdef0123"), publish=events.append
    )
    return core, watcher, events


async def predict(core, task: str, texts: list[str]):
    response = await core.predict(core.tasks[task], texts)
    while core._background:  # shadow runs finish after the answer
        await asyncio.sleep(0.05)
    return response.predictions


def test_an_adapter_champion_answers_its_tasks_fm_calls_until_a_rollback(
    settings, registry, foundation, backend
):
    core, watcher, _ = make_core(settings, registry, foundation, RoutingSpec(threshold=1.0))
    task = core.tasks[TASK]
    base = foundation.ref
    assert watcher.check(TASK)  # the ONNX champion, version 1
    (before,) = asyncio.run(predict(core, TASK, [TEXT]))
    assert before.route is Route.escalated and before.served_by == base

    registry.promote(TASK, "2")
    assert watcher.check(TASK) and not watcher.check(TASK)  # swapped once
    adapter = core.specialists.adapter(TASK)
    assert (adapter.name, adapter.version, adapter.base_model) == (ADAPTER, "2", base.model)
    assert core.specialists.get(TASK).model.ref.version == "1"  # still in front

    # The escalation goes to the adapter, never the base model.
    (escalated,) = asyncio.run(predict(core, TASK, [TEXT]))
    assert escalated.route is Route.escalated
    assert escalated.served_by == ModelRef(model=ADAPTER, version="2")
    folder = registry.download(TASK, version="2")
    expected = backend.predict_proba(task, [TEXT], adapter=Adapter(ADAPTER, folder))[0]
    assert escalated.probabilities[0].probability == pytest.approx(expected.max(), abs=1e-5)
    assert not np.isclose(expected.max(), before.confidence, atol=1e-3)  # it changed answers

    # Another task is still answered by the base model, with the base model's scores.
    (other,) = asyncio.run(predict(core, OTHER, [TEXT]))
    assert other.route is Route.foundation and other.served_by == base
    assert other.confidence == pytest.approx(before.confidence, abs=1e-5)

    # /v1/tasks and /readyz show the adapter.
    assert core.summary(task).models.adapter == adapter
    assert core.summary(core.tasks[OTHER]).models.adapter is None
    _, ready = asyncio.run(core.readiness())
    assert ready["tasks"][TASK]["adapter"]["name"] == ADAPTER
    assert ready["tasks"][OTHER]["adapter"] is None

    registry.rollback(TASK)  # back to the ONNX version 1
    assert watcher.check(TASK)
    assert core.specialists.adapter(TASK) is None
    (after,) = asyncio.run(predict(core, TASK, [TEXT]))
    assert after.route is Route.escalated and after.served_by == base
    assert after.confidence == pytest.approx(before.confidence, abs=1e-5)


def test_fm_only_answers_and_shadow_runs_go_to_the_adapter(settings, registry, foundation):
    registry.promote(TASK, "2")
    # No ONNX specialist live: the adapter answers every text itself.
    core, watcher, events = make_core(settings, registry, foundation, RoutingSpec())
    assert watcher.check(TASK) and core.specialists.get(TASK) is None
    (answer,) = asyncio.run(predict(core, TASK, [TEXT]))
    assert answer.route is Route.foundation and answer.served_by.model == ADAPTER

    # A specialist in front that never escalates: its shadow runs are the adapter's.
    core, _, events = make_core(
        settings, registry, foundation, RoutingSpec(threshold=0.0, shadow_rate=1.0)
    )
    assert core.specialists.swap(TASK, registry.download(TASK, version="1"))
    assert core.specialists.swap(TASK, registry.download(TASK, version="2"))
    (answer,) = asyncio.run(predict(core, TASK, [TEXT]))
    assert answer.route is Route.specialist
    (event,) = [e for e in events if isinstance(e, PredictionEvent)]
    assert event.shadow and event.foundation.model.model == ADAPTER
    registry.rollback(TASK)


def test_names_that_are_no_adapter_are_clear_errors(settings, registry, foundation):
    task = settings.load_tasks()[TASK]
    for name, reason in [
        ("youtube-spam", "not an adapter name"),
        (adapter_name(TASK, "1"), "'onnx' model, not an fm-adapter"),
        (adapter_name(TASK, "9"), "no version 9"),
        (adapter_name("no-such-task", "1"), "no-such-task"),
    ]:
        with pytest.raises(UnknownAdapter, match=reason):
            asyncio.run(foundation.score(task, [TEXT], adapter=name))
    with pytest.raises(UnknownAdapter, match="no registry"):
        asyncio.run(LocalFoundation(foundation.backend).score(task, [TEXT], adapter=ADAPTER))


def test_a_broken_adapter_champion_leaves_the_old_model_serving(settings, registry, tmp_path):
    slots = SpecialistSlots(settings.load_tasks(), settings)
    assert slots.swap(TASK, registry.download(TASK, version="1"))
    broken = shutil.copytree(registry.download(TASK, version="1"), tmp_path / "broken")
    update_meta(broken, version="3", kind=ADAPTER_KIND)  # an adapter without its files
    assert not slots.swap(TASK, broken)
    assert "adapter_config.json" in slots.errors[TASK]
    assert slots.adapter(TASK) is None and slots.champion_version(TASK) == "1"


@pytest.fixture(scope="module")
def fm_server_url(backend, registry, tmp_path_factory):
    """`protege fm-server --adapters ROOT` of a folder holding the adapter and an ONNX model."""
    root = tmp_path_factory.mktemp("fm-server-models")
    for version in ("1", "2"):
        shutil.copytree(registry.download(TASK, version=version), root / f"v{version}")
    adapters = adapter_folders(root)
    assert list(adapters) == [ADAPTER]
    yield from serve_on_loopback(build_fm_server(backend, "smollm2", adapters=adapters))


def test_openai_backend_asks_for_an_adapter_by_its_model_name(fm_server_url, backend, registry):
    task = Settings().load_tasks()[TASK]
    texts = ["Please subscribe to my channel!", TEXT]
    remote = OpenAIBackend(fm_server_url, "smollm2", api_key=None)
    local = Adapter(ADAPTER, registry.download(TASK, version="2"))
    np.testing.assert_allclose(
        remote.predict_proba(task, texts, adapter=Adapter(ADAPTER)),
        backend.predict_proba(task, texts, adapter=local),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        remote.predict_proba(task, texts), backend.predict_proba(task, texts), atol=1e-5
    )
    models = httpx.get(f"{fm_server_url}/models").json()["data"]
    assert {m["id"] for m in models} == {"smollm2", ADAPTER}
    with pytest.raises(httpx.HTTPStatusError):
        remote.predict_proba(task, texts, adapter=Adapter(adapter_name(TASK, "9")))
