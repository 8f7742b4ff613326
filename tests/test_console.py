"""Issue 16's parts below the browser: reservations in the store (SQLite and Postgres),
the desk that hands items out, agreement, retracted verdicts, the console's session
cookie, label order, the owner's timeline and chart. `test_console_browser.py` drives
the whole console in Chromium."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from protege.improver.data.records import DataPoint, Review
from protege.improver.data.reviews import reviewer_positions, reviewers_disagree
from protege.improver.data.timeline import timeline
from protege.improver.review import reservations
from protege.improver.review.agreement import kappa, shared_agreement
from protege.improver.review.progress import review_stats
from protege.improver.review.queue import is_audit, open_items
from protege.schemas import (
    FeedbackRequest,
    LabelProbability,
    ReviewCard,
    ReviewItem,
    Route,
    Timeline,
    TimelineBucket,
)
from protege.serving.console.chart import Decision, timeline_svg
from protege.serving.console.labels import label_options
from protege.serving.console.session import Sessions
from protege.taskspec import ReviewSpec
from test_labels_store import TASKS, YOUTUBE, prediction, verdict

BANKING = TASKS["banking77"]
ONE_REVIEW = YOUTUBE.model_copy(update={"review": ReviewSpec(reviews_needed=1, audit_share=0.0)})


def ranked_ids(n: int) -> list[str]:
    """Prediction ids outside the audit subset: the queue ranks them, none is drawn."""
    ids = (f"youtube-spam.{i}.sig" for i in range(10**6))
    return [pid for pid in ids if not is_audit(pid, 0.1)][:n]


# --------------------------------------------------------------------------- store


def test_an_item_held_by_one_reviewer_is_refused_to_another_until_it_expires(store):
    (pid,) = ranked_ids(1)
    store.record(prediction(pid, "nice song"))
    now = time.time()
    assert store.hold("youtube-spam", pid, "ana", now + 600, now)
    assert not store.hold("youtube-spam", pid, "bob", now + 600, now)
    assert store.hold("youtube-spam", pid, "ana", now + 600, now)  # her own again: renewed
    assert not store.hold("youtube-spam", pid, "bob", now + 600, now + 599)
    assert store.hold("youtube-spam", pid, "bob", now + 1200, now + 601)  # expired: free
    (hold,) = store.live_holds("youtube-spam", now + 602)
    assert hold.reviewer == "bob"


def test_a_finished_hold_keeps_others_out_until_the_verdict_is_stored(store):
    (pid,) = ranked_ids(1)
    store.record(prediction(pid, "nice song", t=time.time()))
    now = time.time()
    assert store.hold("youtube-spam", pid, "ana", now + 600, now)
    assert store.finish_hold("youtube-spam", pid, "ana", now)
    assert not store.hold("youtube-spam", pid, "bob", now + 600, now)  # sent, not stored
    store.record(verdict(pid, "up", reviewer="ana", t=now + 1))
    (hold,) = store.live_holds("youtube-spam", now)
    assert hold.finished and hold.releases
    assert store.hold("youtube-spam", pid, "bob", now + 600, now)


def test_of_two_reviewers_holding_at_the_same_moment_exactly_one_wins(store):
    (pid,) = ranked_ids(1)
    store.record(prediction(pid, "nice song"))
    now = time.time()
    barrier = threading.Barrier(8)
    won: list[str] = []

    def grab(name: str) -> None:
        barrier.wait()
        if store.hold("youtube-spam", pid, name, now + 600, now):
            won.append(name)

    threads = [threading.Thread(target=grab, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert [h.reviewer for h in store.live_holds("youtube-spam", now)] == won


def test_a_retracted_verdict_is_no_verdict(store):
    a, b = ranked_ids(2)
    store.record(prediction(a, "nice song"))
    store.record(prediction(b, "subscribe to me"))
    store.record(verdict(a, "down", reviewer="ana", label="SPAM", t=2.0))
    store.record(verdict(b, "up", reviewer="ana", t=2.0))
    store.record(verdict(a, "retract", reviewer="ana", t=3.0))
    reviewed = {x.uid: x.reviews for x in store.points("youtube-spam")}
    assert reviewed[a] == () and [r.verdict for r in reviewed[b]] == ["up"]
    (counts,) = store.reviewer_counts("youtube-spam", since=0.0)
    assert counts == {"reviewer": "ana", "total": 1, "recent": 1, "down": 0}
    store.record(verdict(a, "up", reviewer="ana", t=4.0))  # judged again after the undo
    assert [r.verdict for r in store.point_of("youtube-spam", a).reviews] == ["up"]


def test_a_retract_names_no_label():
    with pytest.raises(ValidationError, match="retract"):
        FeedbackRequest(prediction_id="p", verdict="retract", label="SPAM")
    assert FeedbackRequest(prediction_id="p", verdict="retract").label is None


def test_the_served_top_k_is_stored_for_reviewers(store):
    (pid,) = ranked_ids(1)
    probs = [
        LabelProbability(label="SPAM", probability=0.7),
        LabelProbability(label="HAM", probability=0.3),
    ]
    store.record(prediction(pid, "check my channel", label="SPAM", probabilities=probs))
    x = store.point_of("youtube-spam", pid)
    assert x.extra["probabilities"] == [["SPAM", 0.7], ["HAM", 0.3]]
    assert x.extra["served_by"] == "tfidf:1" and store.point_of("youtube-spam", "nope") is None


# --------------------------------------------------------------------------- the desk


def test_two_reviewers_taking_items_never_get_the_same_one(store):
    ids = ranked_ids(6)
    for i, pid in enumerate(ids):
        store.record(prediction(pid, f"comment number {i}", t=float(i)))
    seen = {"ana": [], "bob": []}
    for _ in range(3):
        for name in seen:
            card = reservations.take(ONE_REVIEW, store, name).card
            seen[name].append(card.item.prediction_id)
            assert reservations.finish(ONE_REVIEW, store, name, card.item.prediction_id)
    assert not set(seen["ana"]) & set(seen["bob"])
    assert sorted(seen["ana"] + seen["bob"]) == sorted(ids)
    # Every verdict is sent but none stored yet: the finished holds still keep both out.
    assert reservations.take(ONE_REVIEW, store, "ana").card is None


def test_a_reviewer_gets_their_held_item_back_and_never_one_they_skipped(store):
    a, b = ranked_ids(2)
    store.record(prediction(a, "first comment", t=1.0))
    store.record(prediction(b, "second comment", t=2.0))
    first = reservations.take(ONE_REVIEW, store, "ana")
    again = reservations.take(ONE_REVIEW, store, "ana")  # a reload
    assert again.card.item.prediction_id == first.card.item.prediction_id
    assert first.waiting == 1
    reservations.skip(ONE_REVIEW, store, "ana", first.card.item.prediction_id)
    other = reservations.take(ONE_REVIEW, store, "ana")
    assert other.card.item.prediction_id != first.card.item.prediction_id
    reservations.skip(ONE_REVIEW, store, "ana", other.card.item.prediction_id)
    assert reservations.take(ONE_REVIEW, store, "ana").card is None
    assert reservations.take(ONE_REVIEW, store, "bob").card is not None  # skips are hers


def test_an_undone_item_comes_back_to_its_reviewer_first(store):
    a, b = ranked_ids(2)
    store.record(prediction(a, "first comment", t=1.0))
    store.record(prediction(b, "second comment", t=2.0))
    judged = reservations.take(ONE_REVIEW, store, "ana").card.item.prediction_id
    reservations.finish(ONE_REVIEW, store, "ana", judged)
    store.record(verdict(judged, "up", reviewer="ana", t=time.time()))
    current = reservations.take(ONE_REVIEW, store, "ana").card.item.prediction_id
    assert current != judged
    assert reservations.hold_again(ONE_REVIEW, store, "ana", judged)  # undo, retract in flight
    assert reservations.take(ONE_REVIEW, store, "ana").card.item.prediction_id == judged
    assert not reservations.hold_again(ONE_REVIEW, store, "bob", judged)  # hers now


def test_items_whose_reviewers_disagree_come_back_for_a_second_look_first():
    a, b = ranked_ids(2)
    task = YOUTUBE.model_copy(
        update={"review": ReviewSpec(reviews_needed=2, second_looks=1, audit_share=0.0)}
    )
    split = (Review("ana", "up", "HAM", None, 1.0), Review("bob", "down", "HAM", "SPAM", 2.0))
    agreed = (Review("ana", "up", "HAM", None, 1.0), Review("bob", "up", "HAM", None, 2.0))
    points = [
        DataPoint("x", uid=a, served_label="HAM", reviews=split, extra={"margin": 0.9}),
        DataPoint("y", uid=b, served_label="HAM", reviews=agreed, extra={"margin": 0.9}),
    ]
    assert reviewers_disagree(points[0], task.label_names)
    assert not reviewers_disagree(points[1], task.label_names)
    assert [x.uid for x in open_items(task, points, "cid")] == [a]
    assert open_items(task, points, "ana") == []  # a tie-breaker is someone new
    third = Review("cid", "up", "HAM", None, 3.0)
    settled = DataPoint("x", uid=a, served_label="HAM", reviews=(*split, third))
    assert open_items(task, [settled], "dan") == []  # second_looks used up


# --------------------------------------------------------------------------- agreement


def test_fleiss_kappa_matches_the_published_example():
    """Fleiss (1971) as Wikipedia works it: 10 subjects, 14 raters, 5 categories."""
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    items = [[str(j) for j, n in enumerate(row) for _ in range(n)] for row in table]
    observed, k = kappa(items)
    assert observed == pytest.approx(0.378, abs=5e-4) and k == pytest.approx(0.210, abs=5e-4)
    assert kappa([["a"]]) == (None, None)  # one rater: nothing to agree on
    assert kappa([["a", "a"], ["a", "a"]]) == (1.0, None)  # one category: no chance to fix


def test_positions_agreement_and_per_reviewer_progress(store):
    ids = ranked_ids(3)
    for i, pid in enumerate(ids):
        store.record(prediction(pid, f"comment {i}", label="HAM"))
    now = time.time()
    # item 0: all say SPAM (a bare thumbs-down on HAM is SPAM on a two-label task);
    # item 1: ana and bob disagree; item 2: ana alone, long ago.
    store.record(verdict(ids[0], "down", reviewer="ana", t=now))
    store.record(verdict(ids[0], "down", reviewer="bob", label="SPAM", t=now))
    store.record(verdict(ids[1], "up", reviewer="ana", t=now))
    store.record(verdict(ids[1], "down", reviewer="bob", t=now))
    store.record(verdict(ids[2], "up", reviewer="ana", t=1.0))
    x = store.point_of("youtube-spam", ids[0])
    assert set(reviewer_positions(x, YOUTUBE.label_names).values()) == {"SPAM"}
    assert reviewer_positions(
        DataPoint("t", reviews=(Review("ana", "down", "card_arrival"),)), BANKING.label_names
    ) == {"ana": "not card_arrival"}
    stats = review_stats(YOUTUBE, store, now=now)
    assert stats.agreement.items == 2 and stats.agreement.disagreements == 1
    assert stats.agreement.observed == pytest.approx(0.5)
    by_name = {r.reviewer: r for r in stats.reviewers}
    assert (by_name["ana"].today, by_name["ana"].total, by_name["ana"].thumbs_down) == (2, 3, 1)
    assert by_name["bob"].thumbs_down_rate == 1.0
    assert (by_name["ana"].shared, by_name["ana"].agreed) == (2, 1)
    assert shared_agreement([{"a": "x"}]) == {}


# --------------------------------------------------------------------------- timeline


def test_the_timeline_counts_fm_answers_and_accuracy_on_trusted_gold(store):
    ids = ranked_ids(4)
    store.import_gold("youtube-spam", [("spam one", "SPAM"), ("ham one", "HAM")], "file:x")
    store.record(prediction(ids[0], "spam one", label="SPAM", t=0.0))
    store.record(prediction(ids[1], "ham one", label="SPAM", t=1.0))  # wrong
    by_fm = {"route": Route.escalated}
    store.record(prediction(ids[2], "no gold", label="HAM", t=9.0).model_copy(update=by_fm))
    by_fm = {"route": Route.foundation}
    store.record(prediction(ids[3], "spam one", label="SPAM", t=10.0).model_copy(update=by_fm))
    spans = timeline(YOUTUBE, store, buckets=2, window=100).buckets
    assert [(b.predictions, b.foundation, b.gold, b.correct) for b in spans] == [
        (2, 0, 2, 1),
        (2, 2, 1, 1),
    ]
    assert timeline(YOUTUBE, store, buckets=2, window=100).buckets[0].start == 0.0
    svg = timeline_svg(Timeline(task="t", buckets=spans), [Decision(10.0, "promoted", "<b>")])
    assert svg.startswith("<svg") and "&lt;b&gt;" in svg and "<b>" not in svg
    assert "No traffic" in timeline_svg(Timeline(task="t", buckets=[]), [])


def test_an_empty_bucket_draws_no_point():
    spans = [
        TimelineBucket(start=0, end=1, predictions=0, foundation=0, gold=0, correct=0),
        TimelineBucket(start=1, end=2, predictions=4, foundation=1, gold=0, correct=0),
    ]
    svg = timeline_svg(Timeline(task="t", buckets=spans), [])
    assert svg.count("<circle") == 1 and "1/4 answered by the FM" in svg


# --------------------------------------------------------------------------- the console


def test_label_options_put_the_served_top_k_first_then_the_live_specialists_order():
    names = BANKING.label_names
    card = ReviewCard(
        task="banking77",
        item=ReviewItem(
            prediction_id="banking77.x.y",
            text="where is my card",
            label="card_arrival",
            predicted_at=0.0,
            reviews=0,
            score=1.0,
            reasons=["uncertain"],
        ),
        probabilities=[
            LabelProbability(label="card_arrival", probability=0.4),
            LabelProbability(label="card_delivery_estimate", probability=0.3),
        ],
        reserved_until=0.0,
    )
    live = np.full(len(names), 0.001)
    live[names.index("lost_or_stolen_card")] = 0.2
    live[names.index("card_arrival")] = 0.5  # already placed: served order stands
    options = label_options(BANKING, card, live)
    assert [o.name for o in options[:3]] == [
        "card_arrival",
        "card_delivery_estimate",
        "lost_or_stolen_card",
    ]
    assert len(options) == 77 and len({o.name for o in options}) == 77
    assert [o.key for o in options[:10]] == [*"123456789", None]
    assert options[0].served and options[2].probability is None
    assert options[2].live_probability == pytest.approx(0.2)
    fallback = label_options(BANKING, card, None)  # no specialist: the task's order
    served = {"card_arrival", "card_delivery_estimate"}
    assert [o.name for o in fallback[2:4]] == [n for n in names if n not in served][:2]


def test_a_session_cookie_cannot_be_forged_and_ends_on_time():
    sessions = Sessions(b"s" * 32, lifetime_s=60)
    session = sessions.new("ana", "ab" * 32, now=1000.0)
    cookie = sessions.dump(session)
    assert sessions.load(cookie, now=1001.0) == session
    assert sessions.load(cookie, now=1061.0) is None  # over
    assert sessions.load(cookie[:-2] + "xx", now=1001.0) is None  # tampered
    assert Sessions(b"t" * 32, lifetime_s=60).load(cookie, now=1001.0) is None  # other secret
    token, vouch = sessions.sign_in_token()
    assert sessions.sign_in_token_of(vouch) == token and sessions.sign_in_token_of("x") is None
    sent = session.with_sent("youtube-spam.a.s").with_sent("banking77.b.s")
    assert sent.last_sent("youtube-spam") == "youtube-spam.a.s"
    assert sent.without("youtube-spam.a.s").last_sent("youtube-spam") is None
    assert sessions.load(sessions.dump(sent), now=1001.0).sent == sent.sent


def test_the_api_queue_leaves_out_items_the_console_handed_to_someone_else(store):
    from protege.improver.api import review_queue

    a, b = ranked_ids(2)
    store.record(prediction(a, "first comment", t=1.0))
    store.record(prediction(b, "second comment", t=2.0))
    held = reservations.take(ONE_REVIEW, store, "ana").card.item.prediction_id
    for_bob = review_queue(ONE_REVIEW, store, 10, "bob", None)
    assert [i.prediction_id for i in for_bob.items] == [p for p in (a, b) if p != held]
    assert for_bob.window == 2
    for_ana = review_queue(ONE_REVIEW, store, 10, "ana", None)
    assert {i.prediction_id for i in for_ana.items} == {a, b}  # hers is still hers to judge
    assert len(review_queue(ONE_REVIEW, store, 10, None, None).items) == 1
