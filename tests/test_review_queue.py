"""The review queue: what it ranks first, its audit share, items leaving it once
reviewed; the improver's internal API (health, the queue) and the gateway's public
route to it, over real HTTP, on events that went through the real broker.

Acceptance: the queue ranks a low-margin prediction above a confident one, keeps an
audit share, and drops reviewed items."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import uvicorn
from pydantic import SecretStr

from protege.events.broker import free_port
from protege.improver.data.records import DataPoint, Review
from protege.improver.review.queue import at_start, cheap_votes, is_audit, rank
from protege.taskspec import DEFAULT_TASKS_FILE, ReviewSpec, load_tasks

TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE = TASKS["youtube-spam"]


def point(pid: str, text: str = "a comment", margin=0.9, served="HAM", reviews=(), **kw):
    return DataPoint(
        text=text,
        uid=pid,
        served_label=served,
        reviews=tuple(reviews),
        extra={"margin": margin, "confidence": (1 + margin) / 2, "timestamp": 0.0},
        **kw,
    )


def not_audit(n: int, share: float = 0.1) -> list[str]:
    """`n` prediction ids outside the audit subset (so that ranking alone decides)."""
    ids = (f"youtube-spam.{i}.sig" for i in range(10**6))
    return [pid for pid in ids if not is_audit(pid, share)][:n]


# --------------------------------------------------------------------------- ranking


def test_the_queue_ranks_a_low_margin_prediction_above_a_confident_one():
    confident, unsure = not_audit(2)
    items = rank(
        YOUTUBE,
        [point(confident, margin=0.95), point(unsure, margin=0.05)],
        limit=2,
        seed=0,
    )
    assert [i.prediction_id for i in items] == [unsure, confident]
    assert items[0].reasons == ["low_margin"] and items[1].reasons == ["uncertain"]
    assert items[0].score > items[1].score


def test_disagreements_rank_above_a_low_margin_alone_and_an_lf_conflict_adds_to_it():
    a, b, c = not_audit(3)
    points = [
        point(a, text="great song", margin=0.1),
        point(
            b, text="great song too", margin=0.3, specialist_label="SPAM", foundation_label="HAM"
        ),
        # the cheap LFs disagree: "song" votes HAM, "subscribe" votes SPAM
        point(c, text="nice song, subscribe to my channel", margin=0.1),
    ]
    items = rank(YOUTUBE, points, limit=3, votes=cheap_votes(YOUTUBE), seed=0)
    reasons = {i.prediction_id: i.reasons for i in items}
    assert reasons[b] == ["model_disagreement"] and reasons[c] == ["low_margin", "lf_conflict"]
    assert [i.prediction_id for i in items] == [c, b, a]


def test_the_last_label_model_flags_answers_it_disagrees_with():
    a, b = not_audit(2)
    points = [point(a, margin=0.6, served="HAM"), point(b, margin=0.6, served="HAM")]

    def label_model(pts):  # the last round's label model: SPAM for a, nothing for b
        return np.array([[0.1, 0.9] if p.uid == a else [np.nan, np.nan] for p in pts])

    items = rank(YOUTUBE, points, limit=2, label_model=label_model, seed=0)
    assert items[0].prediction_id == a and items[0].reasons == ["label_model_disagreement"]
    assert items[1].reasons == ["uncertain"]


def test_the_queue_keeps_an_audit_share_from_a_fixed_random_subset_of_traffic():
    pids = [f"youtube-spam.{i}.sig" for i in range(3000)]
    subset = [p for p in pids if is_audit(p, 0.1)]
    assert 0.08 < len(subset) / len(pids) < 0.12  # a tenth of traffic, by hash
    assert subset == [p for p in pids if is_audit(p, 0.1)]  # fixed
    points = [point(p, margin=0.99) for p in pids]  # all confident: audit items rank last
    items = rank(YOUTUBE, points, limit=50, seed=1)
    audits = [i for i in items if i.reasons == ["audit"]]
    assert len(audits) == 5 and {i.prediction_id for i in audits} <= set(subset)
    ranked = [i for i in items if i.reasons != ["audit"]]
    assert not {i.prediction_id for i in ranked} & set(subset)  # ranked slots stay unbiased
    other = rank(YOUTUBE, points, limit=50, seed=2)  # drawn at random, not by rank
    assert {i.prediction_id for i in other if i.reasons == ["audit"]} != {
        i.prediction_id for i in audits
    }
    # A short queue shows every open item, however many fall in the audit subset.
    few = [point(p) for p in subset[:3] + not_audit(2)]
    assert len(rank(YOUTUBE, few, limit=10, seed=0)) == 5
    spec = YOUTUBE.review.model_copy(update={"audit_share": 0.0})
    none = rank(YOUTUBE.model_copy(update={"review": spec}), points, limit=50, seed=1)
    assert not [i for i in none if i.reasons == ["audit"]]


def test_a_tasks_first_reviews_are_drawn_at_random_then_the_queue_ranks():
    """Before `random_first` reviews every slot is a uniform draw over the open items,
    audit subset or not: the ranked picks of a cold start lean to one class."""
    first = 50
    task = YOUTUBE.model_copy(
        update={"review": YOUTUBE.review.model_copy(update={"random_first": first})}
    )
    pids = not_audit(400)
    # One kind of text gets the low margins (the FM serves SPAM throughout).
    points = [
        point(p, text=f"{'unsure' if i % 2 else 'sure'} {i}", margin=0.05 if i % 2 else 0.99)
        for i, p in enumerate(pids)
    ]
    ranked = rank(YOUTUBE, points, limit=40, seed=0)
    assert {i.point.text.split()[0] for i in ranked} == {"unsure"}
    drawn = rank(at_start(task, lambda: first - 1), points, limit=40, seed=0)
    assert {i.reasons[0] for i in drawn} == {"audit"} and len(drawn) == 40
    assert 8 < sum(i.point.text.startswith("unsure") for i in drawn) < 32  # both kinds
    assert (
        at_start(task, lambda: first) is task and at_start(YOUTUBE, lambda: 0) is YOUTUBE
    )  # off by default


def test_reviewed_items_leave_the_queue_and_no_one_sees_an_item_twice():
    a, b, c = not_audit(3)
    task = YOUTUBE.model_copy(update={"review": ReviewSpec(reviews_needed=2, audit_share=0.0)})
    ann = Review("ann", "up", "HAM")
    bob = Review("bob", "up", "HAM")
    points = [point(a, reviews=[ann, bob]), point(b, reviews=[ann]), point(c)]
    assert {i.prediction_id for i in rank(task, points, limit=10)} == {b, c}
    assert {i.prediction_id for i in rank(task, points, limit=10, reviewer="ann")} == {c}
    for_bob = rank(task, points, limit=10, reviewer="bob")
    assert [i.prediction_id for i in for_bob] == [b, c]  # a second opinion first
    assert for_bob[0].reasons == ["needs_another_review"]
    one = YOUTUBE.model_copy(update={"review": ReviewSpec(reviews_needed=1, audit_share=0.0)})
    assert {i.prediction_id for i in rank(one, points, limit=10)} == {c}
    owned = point(c)
    owned.extra["imported_gold"] = True  # the task's owner labeled that text already
    assert rank(one, [points[0], points[1], owned], limit=10) == []


# --------------------------------------------------------------------------- over HTTP


class Served:
    """An ASGI app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def specialist(tmp_path_factory):
    from specialist_builder import build_youtube_specialist

    return build_youtube_specialist(tmp_path_factory.mktemp("queue-model") / "v1", version="1")


@pytest.fixture(scope="module")
def foundation():
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.serving.foundation_client import LocalFoundation
    from protege.settings import Settings

    return LocalFoundation(TransformersBackend.from_settings(Settings()))


@pytest.fixture
def stack(kafka_settings, specialist, foundation, tmp_path):
    """The gateway core (a real specialist, the real CPU FM for escalations, events to the
    real broker) behind its API on uvicorn; the improver service taking the events into
    its store, with its API on its own port; keys: ana and bob (feedback), app (predict)."""
    from protege.events.producer import EventProducer
    from protege.improver.service import ImproverService
    from protege.serving.api import build_api
    from protege.serving.auth import ApiKeys
    from protege.serving.gateway import GatewayCore
    from protege.serving.improver_client import ImproverClient
    from protege.serving.prediction_ids import PredictionIds
    from protege.serving.specialists import SpecialistSlots

    settings = kafka_settings.model_copy(
        update={
            "improver_port": free_port(),
            "api_keys": SecretStr("app:app-key=predict;ana:ana-key=feedback;bob:bob-key=feedback"),
            "improver_check_s": 0.5,
        }
    )
    tasks = {
        "youtube-spam": YOUTUBE.model_copy(
            update={"retrain": YOUTUBE.retrain.model_copy(update={"every_feedback": None})}
        )
    }
    slots = SpecialistSlots(tasks, settings)
    assert slots.swap("youtube-spam", specialist)
    producer = EventProducer(settings).start()
    core = GatewayCore(
        tasks,
        foundation,
        slots,
        PredictionIds(b"0123456789abcdef0123"),
        publish=producer.publish,
    )
    improver = ImproverService(
        settings,
        tasks,
        registry=object(),
        publish=lambda e: None,
        group_id=f"q-{uuid.uuid4().hex[:6]}",
    ).start()
    client = ImproverClient(f"http://127.0.0.1:{settings.improver_port}", 5.0)
    app = build_api(core, ApiKeys.from_settings(settings), improver=client)
    try:
        # Traffic only once the intake holds its partitions (Tansu delays a group's join).
        wait_for(lambda: improver.ready()[0], 60, "the improver's intake to join its group")
        with Served(app) as gateway:
            yield gateway.url, improver, settings, producer
    finally:
        improver.stop()
        producer.close(timeout=5)


def wait_for(condition, timeout_s: float, what: str, state=None):
    """`condition()` once truthy; on time out, fails with `what` and `state()` (what
    the parts had done by then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))


def test_reviewers_take_the_queue_through_the_gateway_and_reviewed_items_leave_it(stack):
    url, improver, settings, producer = stack
    app, ana, bob = ({"Authorization": f"Bearer {k}-key"} for k in ("app", "ana", "bob"))
    texts = [
        "Check out my channel, subscribe!",
        "love this song so much",
        "this video is ok i guess",
        "subscribe to me and i will sub back http://x.co",
        "Katy Perry is the best",
        "meh",
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        answers = client.post(
            "/v1/tasks/youtube-spam/predict", json={"texts": texts}, headers=app
        ).json()["predictions"]
        by_id = {a["prediction_id"]: a for a in answers}

        def queue(headers, **params):
            r = client.get("/v1/tasks/youtube-spam/review-queue", params=params, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()

        seen: list[int] = []

        def whole_queue():
            q = queue(ana, limit=10)
            seen.append(len(q["items"]))
            return len(q["items"]) == len(texts) and q

        first = wait_for(
            whole_queue,
            120,
            "the predictions to reach the improver's store",
            lambda: {
                "queue_lengths": sorted(set(seen)),
                "producer": producer.stats(),
                "intake": improver.ingestor.stats(),
            },
        )
        assert first["reviewer"] == "ana" and first["window"] == len(texts)
        items = first["items"]
        assert {i["prediction_id"] for i in items} == set(by_id)  # item ids are prediction ids
        assert all(i["reasons"] for i in items)
        ranked = [i for i in items if i["reasons"] != ["audit"]]
        margins = [i["margin"] for i in ranked]
        assert margins == sorted(margins) or ranked[0]["score"] >= ranked[-1]["score"]

        # ana reviews the top item; with one review needed, it leaves everyone's queue.
        top = items[0]["prediction_id"]
        sent = client.post(
            "/v1/feedback", json={"prediction_id": top, "verdict": "up"}, headers=ana
        )
        assert sent.status_code == 200
        wait_for(
            lambda: top not in {i["prediction_id"] for i in queue(bob, limit=10)["items"]},
            30,
            "the reviewed item to leave the queue",
        )
        assert len(queue(bob, limit=10)["items"]) == len(texts) - 1
        assert len(queue(bob, limit=2)["items"]) == 2

        # The reviewer is the key: asking as someone else is refused, a predict key too.
        assert (
            client.get(
                "/v1/tasks/youtube-spam/review-queue", params={"reviewer": "bob"}, headers=ana
            ).status_code
            == 403
        )
        assert client.get("/v1/tasks/youtube-spam/review-queue", headers=app).status_code == 403
        assert client.get("/v1/tasks/nope/review-queue", headers=ana).status_code == 404
        assert (
            client.get(
                "/v1/tasks/youtube-spam/review-queue", params={"limit": 0}, headers=ana
            ).status_code
            == 422
        )

    # The improver's own health.
    base = f"http://127.0.0.1:{settings.improver_port}"
    live = httpx.get(f"{base}/livez", timeout=5)
    assert live.status_code == 200 and all(live.json()["threads"].values())
    ready = httpx.get(f"{base}/readyz", timeout=5).json()
    assert ready == {"ready": True, "store": True, "intake_joined": True}


def test_the_queue_route_is_503_with_retry_after_when_the_improver_is_away_or_unset(
    tmp_path, foundation
):
    from protege.serving.api import build_api
    from protege.serving.auth import ApiKeys
    from protege.serving.gateway import GatewayCore
    from protege.serving.improver_client import ImproverClient
    from protege.serving.prediction_ids import PredictionIds
    from protege.serving.specialists import SpecialistSlots
    from protege.settings import Settings

    settings = Settings(home=tmp_path, api_keys="ana:ana-key=feedback")
    tasks = {"youtube-spam": YOUTUBE}
    core = GatewayCore(
        tasks, foundation, SpecialistSlots(tasks, settings), PredictionIds(b"x" * 20)
    )
    keys = ApiKeys.from_settings(settings)
    away = ImproverClient(f"http://127.0.0.1:{free_port()}", 2.0)  # nothing listens there
    for improver, retry in ((away, "2"), (None, "60")):
        with Served(build_api(core, keys, improver=improver)) as gateway:
            r = httpx.get(
                f"{gateway.url}/v1/tasks/youtube-spam/review-queue",
                headers={"Authorization": "Bearer ana-key"},
                timeout=10,
            )
        assert r.status_code == 503 and r.headers["retry-after"] == retry
        assert "improver" in r.json()["detail"]


def test_improver_liveness_needs_its_threads_and_a_ticking_rounds_loop(tmp_path):
    from protege.improver.service import ImproverService
    from protege.settings import Settings

    settings = Settings(home=tmp_path, improver_check_s=0.2)
    service = ImproverService(
        settings, {"youtube-spam": YOUTUBE}, registry=object(), publish=lambda e: None, ingest=False
    )
    assert service.live()[0] is False  # nothing started
    service.start()
    try:
        wait_for(lambda: service.live()[0], 10, "the rounds loop's first tick")
        ok, detail = service.live(now=time.monotonic() + 120)  # two minutes without a tick
        assert not ok and "has not ticked" in detail["problem"]
        assert service.ready() == (True, {"store": True, "intake_joined": None})
    finally:
        service.stop()
    ok, detail = service.live()
    assert not ok and "threads stopped" in detail["problem"]
