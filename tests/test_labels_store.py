"""The example store, on SQLite (the default) and on the real Postgres."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from protege.improver.data.gold import HOLDOUT, TRAIN, gold_examples, import_gold_file, split_of
from protege.improver.data.store import ExampleStore
from protege.schemas import (
    FeedbackEvent,
    LabelProbability,
    ModelOutput,
    ModelRef,
    PredictionEvent,
    Route,
)
from protege.settings import Settings
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

POSTGRES_URL = os.environ.get(
    "PROTEGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE = TASKS["youtube-spam"]


def _postgres() -> sa.Engine:
    """The machine's Postgres (.ci/run starts it): a missing server fails, never skips."""
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect():
        pass
    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
        return
    admin = _postgres()
    schema = f"labels_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    s = ExampleStore(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def prediction(
    pid: str, text: str, label: str = "HAM", fm: str | None = "HAM", t: float = 1.0, **kw
):
    probs = [LabelProbability(label=label, probability=0.9)]
    return PredictionEvent(
        prediction_id=pid,
        task="youtube-spam",
        text=text,
        label=label,
        probabilities=probs,
        route=Route.specialist,
        served_by=ModelRef(model="tfidf", version="1"),
        latency_ms=1.0,
        foundation=ModelOutput(
            model=ModelRef(model="fm", version="1"), label=fm, probabilities=probs
        )
        if fm
        else None,
        timestamp=t,
        **kw,
    )


def verdict(
    pid: str, v: str, reviewer: str = "ann", label: str | None = None, t: float = 2.0, **kw
):
    return FeedbackEvent(
        prediction_id=pid,
        task="youtube-spam",
        verdict=v,
        reviewer=reviewer,
        label=label,
        timestamp=t,
        **kw,
    )


def test_settings_default_store_is_sqlite_under_home(tmp_path):
    assert Settings(home=tmp_path).store_url == f"sqlite:///{tmp_path / 'store.db'}"
    assert (
        Settings(home=tmp_path, store_url="postgresql+psycopg://h/db").store_url
        == "postgresql+psycopg://h/db"
    )


def test_an_event_delivered_twice_is_stored_once(store):
    event = prediction("p1", "nice song")
    assert store.record(event) is True
    assert store.record(event) is False
    assert store.record_many([event, event, prediction("p2", "check out my channel")]) == 1
    assert store.counts("youtube-spam") == {"events": 2, "predictions": 2, "feedback": 0, "gold": 0}


def test_a_reviewers_repeat_feedback_replaces_the_earlier_one_whatever_the_arrival_order(store):
    store.record(prediction("p1", "nice song"))
    store.record(verdict("p1", "up", t=5.0))
    store.record(verdict("p1", "down", label="SPAM", t=9.0))  # later verdict: replaces
    store.record(verdict("p1", "up", t=7.0))  # older verdict arriving late: ignored
    store.record(verdict("p1", "up", reviewer="bob", t=6.0))
    rows = {r["reviewer"]: r for r in store.feedback_rows("youtube-spam")}
    assert rows["ann"]["verdict"] == "down" and rows["ann"]["label"] == "SPAM"
    assert rows["bob"]["verdict"] == "up"
    assert store.counts()["events"] == 5


def test_feedback_before_its_prediction_is_kept_and_joined_when_it_arrives(store):
    store.record(verdict("p9", "down", label="SPAM"))
    assert store.points("youtube-spam") == []
    store.record(prediction("p9", "subscribe to me", label="HAM"))
    (point,) = store.points("youtube-spam")
    assert point.served_label == "HAM" and point.foundation_label == "HAM"
    (review,) = point.reviews
    assert (review.verdict, review.label, review.predicted) == ("down", "SPAM", "HAM")


def test_points_are_one_per_text_with_the_reviews_of_every_prediction_of_it(store):
    store.record(prediction("a", "same  text", label="HAM", t=1))
    store.record(prediction("b", "same text", label="SPAM", t=2))
    store.record(verdict("a", "up", reviewer="ann"))
    store.record(verdict("b", "down", reviewer="bob"))
    (point,) = store.points("youtube-spam")
    assert point.uid == "b" and {r.reviewer for r in point.reviews} == {"ann", "bob"}


def test_gold_split_is_fixed_by_text_hash_and_roughly_the_configured_share():
    texts = [f"comment number {i}" for i in range(2000)]
    splits = [split_of(t, 0.2) for t in texts]
    assert splits == [split_of(t, 0.2) for t in texts]  # never changes
    assert split_of("a  b", 0.2) == split_of("a b", 0.2)  # same text, same split
    assert 0.15 < splits.count(HOLDOUT) / len(texts) < 0.25


def test_gold_comes_from_files_and_reviews_with_the_file_winning(store, tmp_path):
    store.record(prediction("p1", "great video", label="HAM"))
    store.record(verdict("p1", "up"))
    store.record(prediction("p2", "my channel pls", label="HAM"))
    store.record(verdict("p2", "down", label="SPAM"))
    store.record(prediction("p3", "meh", label="HAM"))
    store.record(verdict("p3", "down"))  # no label: not gold on its own
    gold_file = tmp_path / "gold.csv"
    gold_file.write_text('text,label\n"great video",SPAM\nfree iphone http://x.co,SPAM\n')
    summary = import_gold_file(store, YOUTUBE, gold_file)
    assert summary["imported"] == 2 and summary[TRAIN] + summary[HOLDOUT] == 2
    gold = {g.text: g for g in gold_examples(store, YOUTUBE)}
    assert set(gold) == {"great video", "my channel pls", "free iphone http://x.co"}
    assert gold["great video"].label == "SPAM" and gold["great video"].source == "file:gold.csv"
    assert gold["my channel pls"].source == "review:correction"


def test_a_gold_file_with_an_unknown_label_imports_nothing_and_names_the_line(store, tmp_path):
    bad = tmp_path / "gold.jsonl"
    bad.write_text('{"text": "ok", "label": "HAM"}\n{"text": "x", "label": "EGGS"}\n')
    with pytest.raises(ValueError, match=r"gold.jsonl:2: unknown label 'EGGS'"):
        import_gold_file(store, YOUTUBE, bad)
    assert store.gold_rows("youtube-spam") == []


def test_fm_scores_are_cached_by_key_and_text(store):
    store.put_scores("k", ["a", "b"], np.array([[0.1, 0.9], [0.6, 0.4]]))
    store.put_scores("k", ["a"], np.array([[0.5, 0.5]]))  # first score stays
    found = store.get_scores("k", ["a", "b", "c"])
    assert set(found) == {"a", "b"} and found["a"].tolist() == [0.1, 0.9]
    assert store.get_scores("other", ["a"]) == {}


def test_reports_are_kept(store):
    first = store.save_report(
        "youtube-spam", "lf_report", {"lfs": [], "n": np.int64(3)}, run_id="r1"
    )
    store.save_report("youtube-spam", "label_model", {"chosen": "snorkel"})
    (saved,) = store.reports("youtube-spam", "lf_report")
    assert (
        saved["id"] == first and saved["payload"] == {"lfs": [], "n": 3} and saved["run_id"] == "r1"
    )
