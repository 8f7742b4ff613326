"""The gateway core without Ray: what gets recorded for each prediction (both
models' outputs on escalation and shadow runs), and specialist swaps."""

import asyncio
from types import SimpleNamespace

import pytest

from protege.foundation.transformers_backend import TransformersBackend
from protege.schemas import FeedbackEvent, FeedbackRequest, PredictionEvent, Route
from protege.serving.auth import Identity
from protege.serving.foundation_client import HandleFoundation, LocalFoundation
from protege.serving.gateway import GatewayCore, InputError, UnknownPrediction
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings
from protege.taskspec import RoutingSpec
from specialist_builder import build_youtube_specialist


@pytest.fixture(scope="module")
def foundation():
    return LocalFoundation(TransformersBackend.from_settings(Settings()))


@pytest.fixture(scope="module")
def specialist_folder(tmp_path_factory):
    return build_youtube_specialist(tmp_path_factory.mktemp("models") / "v1", version="1")


def make_core(tmp_path, foundation, folder, shadow_rate=0.0):
    settings = Settings(home=tmp_path)
    tasks = settings.load_tasks()
    youtube = tasks["youtube-spam"]
    tasks["youtube-spam"] = youtube.model_copy(
        update={"routing": RoutingSpec(threshold=0.8, shadow_rate=shadow_rate)}
    )
    slots = SpecialistSlots(tasks, settings)
    if folder is not None:
        assert slots.swap("youtube-spam", folder)
    events = []
    core = GatewayCore(
        tasks, foundation, slots, PredictionIds(b"0123456789abcdef0123"), publish=events.append
    )
    return core, events


class FoundationHandle:
    """What a Ray Serve handle to the FoundationModel deployment offers the gateway:
    `handle.<method>.remote(...)` returns an awaitable, here over the real backend."""

    def __init__(self, backend, tasks):
        async def score(task: str, text: str, adapter: str | None = None) -> list[float]:
            return backend.predict_proba(tasks[task], [text])[0].tolist()

        async def info() -> dict:
            return backend.ref.model_dump()

        self.score = SimpleNamespace(remote=score)
        self.info = SimpleNamespace(remote=info)


async def predict_and_settle(core, task, texts):
    response = await core.predict(core.tasks[task], texts)
    while core._background:  # shadow runs finish after the answer
        await asyncio.sleep(0.05)
    return response


def test_shadow_runs_record_the_fm_answer_without_changing_the_response(
    tmp_path, foundation, specialist_folder
):
    core, events = make_core(tmp_path, foundation, specialist_folder, shadow_rate=1.0)
    response = asyncio.run(
        predict_and_settle(core, "youtube-spam", ["Subscribe to my channel http://x.co"])
    )
    (item,) = response.predictions
    assert item.route is Route.specialist and item.served_by.model == "tfidf-lr"
    (event,) = events
    assert isinstance(event, PredictionEvent) and event.shadow
    assert event.specialist.model.model == "tfidf-lr"
    assert event.foundation.model.model == "smollm2-135m-instruct"
    assert event.label == item.label and event.prediction_id == item.prediction_id


def test_shadow_runs_are_skipped_while_the_cap_is_reached(tmp_path, foundation, specialist_folder):
    core, events = make_core(tmp_path, foundation, specialist_folder, shadow_rate=1.0)
    core.shadow_max_inflight = 0
    response = asyncio.run(
        predict_and_settle(core, "youtube-spam", ["Subscribe to my channel http://x.co"])
    )
    (event,) = events
    assert response.predictions[0].route is Route.specialist
    assert not event.shadow and event.foundation is None


def test_escalated_events_carry_both_outputs_and_direct_ones_only_the_answerer(
    tmp_path, foundation, specialist_folder
):
    core, events = make_core(tmp_path, foundation, specialist_folder)
    texts = ["Subscribe to my channel http://x.co", "hmm ok"]
    response = asyncio.run(predict_and_settle(core, "youtube-spam", texts))
    by_id = {e.prediction_id: e for e in events}
    for item in response.predictions:
        event = by_id[item.prediction_id]
        assert event.route is item.route and not event.shadow
        assert (event.foundation is not None) == (item.route is Route.escalated)
        assert event.specialist is not None


def test_feedback_event_names_the_task_from_the_signed_id(tmp_path, foundation):
    core, events = make_core(tmp_path, foundation, None)
    pid = core.ids.new("banking77")
    ana = Identity("ana", frozenset({"feedback", "trusted"}))
    event = core.feedback(
        FeedbackRequest(prediction_id=pid, verdict="down", label="card_arrival"), ana
    )
    assert isinstance(event, FeedbackEvent) and event.task == "banking77" and events == [event]
    assert event.reviewer == "ana" and event.trusted
    with pytest.raises(InputError):
        core.feedback(FeedbackRequest(prediction_id=pid, verdict="down", label="SPAM"), ana)
    with pytest.raises(UnknownPrediction):
        core.feedback(
            FeedbackRequest(
                prediction_id=PredictionIds(b"another-secret-key-0").new("banking77"),
                verdict="up",
            ),
            ana,
        )


def test_a_specialist_that_fails_to_load_leaves_the_old_one_serving(
    tmp_path, foundation, specialist_folder
):
    core, _ = make_core(tmp_path, foundation, specialist_folder)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"not an onnx graph")
    (corrupt / "model.json").write_text(
        (specialist_folder / "model.json").read_text().replace('"1"', '"2"')
    )
    assert not core.specialists.swap("youtube-spam", corrupt)
    assert core.specialists.get("youtube-spam").model.ref.version == "1"
    assert "model.onnx" in core.specialists.errors["youtube-spam"]
    ready, detail = asyncio.run(core.readiness())
    assert ready and "model.onnx" in detail["tasks"]["youtube-spam"]["specialist_error"]
    assert core.summary(core.tasks["youtube-spam"]).models.specialist_error


def test_prediction_ids_are_signed_per_deployment_secret():
    ids = PredictionIds(b"0123456789abcdef0123")
    pid = ids.new("youtube-spam")
    assert ids.task_of(pid) == "youtube-spam"
    assert ids.task_of(pid.replace("youtube-spam", "banking77", 1)) is None
    assert PredictionIds(b"another-secret-key-0").task_of(pid) is None
    with pytest.raises(ValueError):
        PredictionIds(b"short")


def test_the_task_summary_shows_the_threshold_in_use_and_where_it_comes_from(
    tmp_path, foundation, specialist_folder
):
    import shutil

    from protege.artifact import update_meta

    core, _ = make_core(tmp_path, foundation, None)
    summary = core.summary(core.tasks["youtube-spam"])
    assert (summary.threshold, summary.threshold_source) == (0.8, "configured")
    calibrated = shutil.copytree(specialist_folder, tmp_path / "calibrated")
    update_meta(calibrated, threshold=0.55)
    assert core.specialists.swap("youtube-spam", calibrated)
    summary = core.summary(core.tasks["youtube-spam"])
    assert (summary.threshold, summary.threshold_source) == (0.55, "calibrated")
    assert summary.configured_threshold == 0.8


def test_the_first_fm_answer_names_its_model_before_any_readiness_probe(tmp_path, foundation):
    handle = HandleFoundation(FoundationHandle(foundation.backend, Settings().load_tasks()))
    core, events = make_core(tmp_path, handle, None)
    assert handle.ref is None  # nobody called /readyz on this replica
    response = asyncio.run(predict_and_settle(core, "banking77", ["My card has not arrived"]))
    (item,) = response.predictions
    assert item.route is Route.foundation
    assert item.served_by == foundation.ref and item.served_by.model == "smollm2-135m-instruct"
    assert events[0].foundation.model == foundation.ref
