"""The demo's pieces, without Ray or a model: reviewers, the replay against a fake
gateway, the record's figures, the summary, the chart, the CLI and the settings it
hands to the improver."""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from protege.cli import build_parser
from protege.commands.demo import options_from_args
from protege.demo.chart import write_chart
from protege.demo.deployment import demo_settings, import_gold, owner_exam, write_tasks_file
from protege.demo.model_events import decision_of
from protege.demo.options import TASK_PRESETS, DemoOptions
from protege.demo.record import Decision, Outcome, RunRecord
from protege.demo.reviewers import Review, ReviewerPool
from protege.demo.runner import improver_args
from protege.demo.summary import write as write_summary
from protege.demo.traffic import Replay, stream
from protege.improver.data.store import ExampleStore
from protege.schemas import ModelAction, ModelEvent, ModelRef
from protege.settings import Settings
from protege.stack import settings_env, stop_on_sigterm
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

LABELS = ["HAM", "SPAM"]


# --------------------------------------------------------------------------- reviewers


def test_reviewers_answer_the_configured_share_with_the_configured_mistakes():
    pool = ReviewerPool(LABELS, share=0.3, error_rate=0.1, seed=1)
    reviews = [pool.review("HAM", gold="HAM") for _ in range(5000)]
    given = [r for r in reviews if r is not None]
    assert 0.27 < len(given) / 5000 < 0.33
    wrong = [r for r in given if r.verdict == "down"]  # gold was served: a "down" is a mistake
    assert 0.07 < len(wrong) / len(given) < 0.13
    assert all(r.label == "SPAM" for r in wrong)
    assert pool.reviews == len(given) and pool.mistakes == len(wrong)


def test_a_faultless_reviewer_confirms_right_answers_and_corrects_wrong_ones():
    pool = ReviewerPool(LABELS, share=1.0, error_rate=0.0)
    assert pool.review("SPAM", gold="SPAM") == Review("ana", "up", None)
    assert pool.review("HAM", gold="SPAM") == Review("ben", "down", "SPAM")


def test_a_mistaken_reviewer_never_believes_the_gold_label():
    pool = ReviewerPool(["a", "b", "c"], share=1.0, error_rate=1.0, seed=3)
    for _ in range(50):
        review = pool.review("a", gold="a")
        assert review.verdict == "down" and review.label in ("b", "c")


def test_the_same_seed_gives_the_same_reviews():
    def run(seed):
        pool = ReviewerPool(LABELS, share=0.5, error_rate=0.2, seed=seed)
        return [pool.review("HAM", gold=g) for g in ["HAM", "SPAM"] * 50]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_review_body_is_the_feedback_request():
    assert Review("ana", "up", None).body("p1") == {
        "prediction_id": "p1",
        "verdict": "up",
        "reviewer": "ana",
    }
    assert Review("ana", "down", "HAM").body("p1")["label"] == "HAM"


@pytest.mark.parametrize("share,error_rate", [(-0.1, 0.0), (0.5, 1.5)])
def test_reviewer_rates_outside_zero_one_are_refused(share, error_rate):
    with pytest.raises(ValueError):
        ReviewerPool(LABELS, share=share, error_rate=error_rate)


# --------------------------------------------------------------------------- the stream


def test_stream_is_the_train_split_shuffled_by_seed():
    a, b = stream("youtube-spam", seed=0), stream("youtube-spam", seed=0)
    assert a == b and len(a) == 1586
    assert stream("youtube-spam", seed=1, limit=20) != a[:20]
    assert {label for _, label in a} == set(LABELS)


# --------------------------------------------------------------------------- the replay


class FakeGateway:
    """Answers predict like the FM on day 0 (HAM for everything); serves a review queue of
    the predictions (oldest first, without the asking reviewer's); counts feedback."""

    def __init__(self, fail_every: int = 0, reviews_needed: int = 1):
        self.feedback: list[dict] = []
        self.calls = 0
        self.fail_every = fail_every
        self.reviews_needed = reviews_needed
        self.queue_calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/predict"):
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                return httpx.Response(503, json={"detail": "model failed"})
            return httpx.Response(
                200,
                json={
                    "task": "youtube-spam",
                    "predictions": [
                        {
                            "prediction_id": f"p{self.calls}",
                            "label": "HAM",
                            "confidence": 0.6,
                            "probabilities": [],
                            "served_by": {"model": "smollm2", "version": "1"},
                            "route": "foundation",
                            "latency_ms": 300.0,
                        }
                    ],
                },
            )
        if request.url.path == "/v1/feedback":
            self.feedback.append(json.loads(request.content))
            return httpx.Response(200, json={"accepted": True})
        if request.url.path.endswith("/review-queue"):
            reviewer = request.url.params["reviewer"]
            self.queue_calls.append(reviewer)
            seen: dict[str, set] = {}
            for f in self.feedback:
                seen.setdefault(f["prediction_id"], set()).add(f["reviewer"])
            items = sorted(
                (
                    {"prediction_id": f"p{i}", "reasons": ["uncertain"]}
                    for i in range(1, self.calls + 1)
                    if len(seen.get(f"p{i}", ())) < self.reviews_needed
                    and reviewer not in seen.get(f"p{i}", ())
                ),
                key=lambda item: not seen.get(item["prediction_id"]),  # half-reviewed first
            )
            return httpx.Response(200, json={"items": items[: int(request.url.params["limit"])]})
        return httpx.Response(404)


def replay(items, gateway, share=1.0, **kwargs) -> tuple[RunRecord, Replay]:
    record = RunRecord("youtube-spam")
    run = Replay(
        "http://demo",
        "youtube-spam",
        items,
        ReviewerPool(LABELS, share, 0.0),
        record,
        concurrency=3,
        review_every_s=0.01,
        transport=httpx.MockTransport(gateway),
        **kwargs,
    )
    asyncio.run(run.run())
    return record, run


def test_replay_judges_each_answer_against_gold_and_reviews_from_the_queue():
    items = [("great song", "HAM"), ("sub to my channel", "SPAM")] * 10
    gateway = FakeGateway()
    record, run = replay(items, gateway)
    totals = record.totals()
    assert run.sent == 20 and totals["requests"] == 20
    assert totals["accuracy"] == 0.5 and totals["fm_share"] == 1.0
    assert totals["feedback"] == 20 and totals["feedback_down"] == 10
    downs = [f for f in gateway.feedback if f["verdict"] == "down"]
    assert len(downs) == 10 and all(f["label"] == "SPAM" for f in downs)
    assert {f["prediction_id"] for f in gateway.feedback} == {f"p{i}" for i in range(1, 21)}
    assert set(gateway.queue_calls) <= {"ana", "ben", "chen", "dara"}  # each asks as themselves


def test_reviewers_send_their_share_of_verdicts_two_distinct_reviewers_an_item():
    items = [("great song", "HAM")] * 40
    gateway = FakeGateway(reviews_needed=2)
    record, _ = replay(items, gateway, share=0.5, reviews_needed=2)
    assert record.totals()["feedback"] == 20  # half the answers' worth of verdicts
    by_item: dict[str, list[str]] = {}
    for f in gateway.feedback:
        by_item.setdefault(f["prediction_id"], []).append(f["reviewer"])
    assert all(len(set(r)) == len(r) for r in by_item.values())  # never twice by one reviewer
    # Half-reviewed items come first: few are left waiting for their second review.
    assert sum(len(r) == 2 for r in by_item.values()) >= 8 and len(by_item) <= 12


def test_replay_counts_failed_requests_and_goes_on():
    record, _ = replay([("hello", "HAM")] * 12, FakeGateway(fail_every=4))
    assert record.totals()["requests"] == 9
    assert record.errors == {"predict 503": 3}


def test_replay_stops_sending_at_its_deadline():
    record, run = replay([("hello", "HAM")] * 50, FakeGateway(), deadline_s=-1.0)
    assert run.stopped_early and run.sent == 0 and record.totals()["requests"] == 0


def test_a_cancelled_replay_stops_at_once_without_a_last_review_catch_up():
    """Ctrl-C cancels the replay: the review loop goes too, even mid-request to a review
    queue that takes its time (a busy improver), instead of catching up first."""
    gateway = FakeGateway()

    async def slow_queue(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60 if request.url.path.endswith("/review-queue") else 0.01)
        return gateway(request)

    run = Replay(
        "http://demo",
        "youtube-spam",
        [("hello", "HAM")] * 10_000,
        ReviewerPool(LABELS, 1.0, 0.0),
        RunRecord("youtube-spam"),
        concurrency=2,
        review_every_s=0.01,
        transport=httpx.MockTransport(slow_queue),
    )

    async def cancel_mid_replay() -> float:
        replaying = asyncio.create_task(run.run())
        await asyncio.sleep(0.5)
        replaying.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await replaying
        return time.monotonic() - cancelled_at

    assert asyncio.run(cancel_mid_replay()) < 10  # not the queue's 60 s
    assert 0 < run.sent < 10_000


# --------------------------------------------------------------------------- the record


def day_zero_then_specialist() -> RunRecord:
    """60 s of the FM at 50 %, a promotion at 60 s, then a specialist at 90 % (some escalated)."""
    record = RunRecord("youtube-spam")
    for i in range(100):
        record.add_outcome(
            Outcome(
                t=i * 0.6,
                route="foundation",
                model="smollm2",
                version="1",
                correct=i % 2 == 0,
                latency_ms=350.0,
            )
        )
    for i in range(200):
        record.add_outcome(
            Outcome(
                t=60 + i * 0.3,
                route="escalated" if i % 5 == 0 else "specialist",
                model="tfidf-lr",
                version="1",
                correct=i % 10 != 0,
                latency_ms=3.0,
            )
        )
    record.add_decision(
        Decision(
            t=45.0,
            action="rejected",
            model="minilm",
            version="1",
            accuracy=0.4,
            reasons=("accuracy below 0.5",),
        )
    )
    record.add_decision(
        Decision(
            t=60.0,
            action="promoted",
            model="tfidf-lr",
            version="2",
            accuracy=0.9,
            reasons=("passed the gate",),
        )
    )
    for verdict in ["up"] * 30 + ["down"] * 10:
        record.add_feedback(verdict)
    return record


def test_phases_split_the_run_at_each_promotion():
    day0, after = day_zero_then_specialist().phases()
    assert day0.name.startswith("day 0") and day0.requests == 100
    assert day0.accuracy == 0.5 and day0.fm_share == 1.0 and day0.p50_latency_ms == 350.0
    assert after.name == "tfidf-lr v2 promoted" and after.start == 60.0 and after.requests == 200
    assert after.accuracy == 0.9 and after.fm_share == pytest.approx(0.2)


def test_totals_count_training_runs_and_gate_decisions():
    totals = day_zero_then_specialist().totals(recent=50)
    assert totals["training_runs"] == 2 and totals["promotions"] == 1 and totals["rejections"] == 1
    assert totals["first_promotion_s"] == 60.0
    assert totals["feedback"] == 40 and totals["feedback_down"] == 10
    assert totals["recent_window"] == 50 and totals["recent_fm_share"] == pytest.approx(0.2)


def test_series_are_running_means_over_the_window():
    series = day_zero_then_specialist().series(window=100)
    assert series["accuracy"][99] == 0.5 and series["fm_share"][99] == 1.0
    assert series["accuracy"][-1] == pytest.approx(0.9) and series["fm_share"][-1] == pytest.approx(
        0.2
    )
    assert series["accuracy"][0] == 1.0  # the first point averages only itself


def test_model_event_becomes_a_decision_timed_from_the_replay_start():
    event = ModelEvent(
        task="youtube-spam",
        model=ModelRef(model="tfidf-lr", version="3"),
        action=ModelAction.promoted,
        metrics={"accuracy": 0.93},
        reasons=["passed the gate"],
        timestamp=1000.0 + 42,
    )
    assert decision_of(event, origin=1000.0) == Decision(
        t=42.0,
        action="promoted",
        model="tfidf-lr",
        version="3",
        accuracy=0.93,
        reasons=("passed the gate",),
    )


# --------------------------------------------------------------------------- outputs


def test_chart_is_written_as_a_non_empty_png(tmp_path):
    path = write_chart(day_zero_then_specialist(), tmp_path / "chart.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_chart_of_a_run_with_no_answers_is_still_written(tmp_path):
    assert write_chart(RunRecord("banking77"), tmp_path / "chart.png").stat().st_size > 0


def test_summary_is_written_as_json_and_text(tmp_path):
    path = write_summary(day_zero_then_specialist(), tmp_path, wall_s=300.0, extra={"seed": 0})
    data = json.loads(path.read_text())
    assert data["totals"]["promotions"] == 1 and data["wall_s"] == 300.0 and data["seed"] == 0
    assert [p["requests"] for p in data["phases"]] == [100, 200]
    assert len((tmp_path / "outcomes.csv").read_text().splitlines()) == 1 + 300
    text = (tmp_path / "summary.txt").read_text()
    assert "tfidf-lr v2 promoted" in text and "90.0 %" in text and "rejected 1" in text


# --------------------------------------------------------------------------- wiring


def test_demo_command_takes_its_options():
    args = build_parser().parse_args(
        [
            "demo",
            "--task",
            "banking77",
            "--review-share",
            "0.2",
            "--error-rate",
            "0",
            "--limit",
            "300",
        ]
    )
    assert args.command == "demo" and args.task == "banking77" and args.limit == 300
    options = options_from_args(args)
    assert options.review_share == 0.2 and options.error_rate == 0.0 and options.limit == 300
    assert options_from_args(build_parser().parse_args(["demo"])) == DemoOptions()


def test_each_task_gets_its_presets_unless_a_flag_says_otherwise():
    slow = options_from_args(build_parser().parse_args(["demo", "--task", "banking77"]))
    for name, value in TASK_PRESETS["banking77"].items():
        assert getattr(slow, name) == value
    assert slow.error_rate == DemoOptions().error_rate  # not a preset: the common default
    chosen = options_from_args(
        build_parser().parse_args(
            ["demo", "--task", "banking77", "--gold", "0", "--retrain-every", "7"]
        )
    )
    assert (chosen.gold, chosen.retrain_every, chosen.retrain_minutes) == (0, 7, 3.0)


def test_demo_help_names_each_tasks_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default youtube-spam 0, banking77 1000" in text
    assert "default youtube-spam 160, banking77 0" in text
    assert "default youtube-spam off, banking77 3.0" in text and "(default: None)" not in text


@pytest.mark.parametrize(
    "flags",
    [["--review-share", "1.5"], ["--gold", "-1"], ["--task", "banking77", "--retrain-every", "0"]],
)
def test_demo_options_out_of_range_are_refused(flags):
    with pytest.raises(SystemExit, match="--"):
        options_from_args(build_parser().parse_args(["demo", *flags]))


def test_the_improver_trains_the_demo_task_on_the_early_trigger():
    args = improver_args(DemoOptions(task="banking77", retrain_every=40, retrain_minutes=2.0))
    assert args == ["--task", "banking77", "--retrain-every", "40", "--retrain-minutes", "2.0"]
    parsed = build_parser().parse_args(["improver", "run", *args])
    assert parsed.task == ["banking77"] and parsed.retrain_every == 40


def test_the_run_has_its_own_tasks_file_with_the_demo_budgets(tmp_path):
    options = DemoOptions(task="banking77", prompt_lf_budget=8, fm_eval_max=10, reviews_needed=3)
    tasks = load_tasks(write_tasks_file(DEFAULT_TASKS_FILE, options, tmp_path))
    retrain = tasks["banking77"].retrain
    assert (retrain.prompt_lf_budget, retrain.fm_eval_max) == (8, 10)
    assert tasks["banking77"].review.reviews_needed == 3
    assert tasks["youtube-spam"] == load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]


def test_an_unknown_task_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(SystemExit, match="unknown task"):
        write_tasks_file(DEFAULT_TASKS_FILE, DemoOptions(task="nope"), tmp_path)


def test_the_owners_gold_goes_into_the_runs_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGE_AUTH_DISABLED", "true")
    settings, _ = demo_settings(DemoOptions(port=18123), tmp_path)
    pairs = stream("youtube-spam", seed=0, limit=120)
    counts = import_gold(settings, "youtube-spam", pairs, tmp_path)
    assert counts["imported"] == 120
    assert counts["exam"] + counts["calibration"] + counts["train"] == 120
    assert 10 < counts["exam"] < 40
    store = ExampleStore(settings.store_url)
    assert len(store.gold_rows("youtube-spam")) == len({text for text, _ in pairs})  # one per text
    store.close()


def test_the_owners_evaluation_set_comes_from_the_held_out_buckets_only():
    from protege.improver.data.gold import TRAIN, task_split

    task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    items = stream("youtube-spam", seed=0)
    chosen, rest = owner_exam(task, items, 100)
    assert len(chosen) == 100 and len(chosen) + len(rest) == len(items)
    assert all(task_split(task, text) != TRAIN for text, _ in chosen)
    exam = sum(task_split(task, text) == "exam" for text, _ in set(chosen))
    assert 50 < exam < 80  # two thirds of it grades; the rest calibrates
    assert rest[:5] == [i for i in items if i not in chosen][:5]  # the replay keeps its order


def test_a_run_has_its_own_home_and_with_auth_on_a_key_per_reviewer(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGE_AUTH_DISABLED", "false")
    settings, headers = demo_settings(DemoOptions(port=18123), tmp_path)
    assert settings.home == tmp_path / "home" and settings.http_port == 18123
    assert settings.tasks_file == tmp_path / "tasks.yaml"
    for derived in (
        settings.store_url,
        settings.mlflow_tracking_uri,
        str(settings.events_spool_dir),
    ):
        assert str(tmp_path / "home") in derived
    from protege.serving.auth import ApiKeys

    keys = ApiKeys.from_settings(settings)
    client = keys.identify(headers.pop("client")["Authorization"].removeprefix("Bearer "))
    assert client.name == "demo-client" and client.roles == {"predict"}
    for name, header in headers.items():  # every reviewer is their own key
        reviewer = keys.identify(header["Authorization"].removeprefix("Bearer "))
        assert reviewer.name == name and reviewer.has("feedback") and not reviewer.trusted
    monkeypatch.setenv("PROTEGE_AUTH_DISABLED", "true")
    assert all(h == {} for h in demo_settings(DemoOptions(port=18123), tmp_path)[1].values())


def test_settings_env_gives_a_child_process_the_same_settings(tmp_path, monkeypatch):
    settings = Settings(
        home=tmp_path, kafka_bootstrap="127.0.0.1:9999", auth_disabled=True, http_port=8123
    )
    for name in [n for n in os.environ if n.startswith("PROTEGE_")]:
        monkeypatch.delenv(name)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_sigterm_stops_like_ctrl_c():
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
