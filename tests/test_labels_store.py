"""The example store, on SQLite (the default) and on the real Postgres."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from protege.improver.data.gold import (
    CALIBRATION,
    EXAM,
    SPLITS,
    TRAIN,
    gold_examples,
    import_gold_file,
    split_of,
)
from protege.improver.data.store import ExampleStore, add_missing_columns
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

TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE = TASKS["youtube-spam"]


def prediction(
    pid: str, text: str, label: str = "HAM", fm: str | None = "HAM", t: float = 1.0, **kw
):
    probs = [LabelProbability(label=label, probability=0.9)]
    kw.setdefault("probabilities", probs)
    return PredictionEvent(
        prediction_id=pid,
        task="youtube-spam",
        text=text,
        label=label,
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


def test_gold_split_is_fixed_by_text_hash_and_roughly_the_configured_shares():
    texts = [f"comment number {i}" for i in range(4000)]
    splits = [split_of(t, 0.2, 0.1) for t in texts]
    assert splits == [split_of(t, 0.2, 0.1) for t in texts]  # never changes
    assert split_of("a  b", 0.2, 0.1) == split_of("a b", 0.2, 0.1)  # same text, same split
    assert 0.17 < splits.count(EXAM) / len(texts) < 0.23
    assert 0.08 < splits.count(CALIBRATION) / len(texts) < 0.12
    # The exam bucket is the old 20 % holdout: a calibration share never moves a text into it.
    assert [s == EXAM for s in splits] == [split_of(t, 0.2, 0.3) == EXAM for t in texts]


def test_a_store_made_before_the_trust_and_margin_columns_gets_them_and_keeps_its_rows(
    store_url,
):
    """An additive migration: `create_all` makes missing tables only, so columns added
    later are added by ALTER TABLE, once, on SQLite and Postgres alike."""
    engine = sa.create_engine(store_url)
    old = sa.MetaData()
    sa.Table(
        "feedback",
        old,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("prediction_id", sa.String(200), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("label", sa.String(200)),
        sa.Column("comment", sa.Text),
        sa.Column("timestamp", sa.Float, nullable=False),
    )
    old.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO feedback (event_id, prediction_id, task, reviewer, verdict, timestamp) "
            "VALUES ('e0', 'p0', 'youtube-spam', 'ann', 'up', 1.0)"
        )
    store = ExampleStore(store_url)  # creates the other tables, adds the columns
    try:
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("feedback")}
        assert "trusted" in columns
        assert "margin" in {c["name"] for c in sa.inspect(store.engine).get_columns("predictions")}
        (row,) = store.feedback_rows("youtube-spam")
        assert row["reviewer"] == "ann" and row["trusted"] is False  # old rows: untrusted
        assert add_missing_columns(store.engine) == []  # idempotent
        store.record(verdict("p1", "up", trusted=True))
        assert {r["event_id"]: r["trusted"] for r in store.feedback_rows("youtube-spam")}[
            "e0"
        ] is False
    finally:
        store.close()
        engine.dispose()


def test_a_verdicts_trust_and_an_answers_margin_are_stored(store):
    store.record(prediction("p1", "nice song"))
    store.record(
        prediction(
            "p2",
            "sub to me",
            probabilities=[
                LabelProbability(label="SPAM", probability=0.55),
                LabelProbability(label="HAM", probability=0.45),
            ],
        )
    )
    store.record(verdict("p1", "up", reviewer="owner", trusted=True))
    store.record(verdict("p1", "up", reviewer="ann"))
    (point,) = [p for p in store.points("youtube-spam") if p.uid == "p1"]
    assert {r.reviewer: r.trusted for r in point.reviews} == {"owner": True, "ann": False}
    recent = store.recent_points("youtube-spam", window=10)
    assert [p.uid for p in recent] == ["p1", "p2"] or [p.uid for p in recent] == ["p2", "p1"]
    margins = {p.uid: p.extra["margin"] for p in recent}
    assert margins["p2"] == pytest.approx(0.1) and margins["p1"] is None  # one probability


def test_recent_points_are_the_newest_predictions_one_per_text(store):
    for i in range(6):
        store.record(prediction(f"p{i}", f"text {i % 3}", t=float(i)))
    store.record(verdict("p0", "up"))
    recent = store.recent_points("youtube-spam", window=4)
    assert [p.uid for p in recent] == ["p5", "p4", "p3"]  # newest first; p2 is past the window
    assert [len(p.reviews) for p in recent] == [0, 0, 1]  # p3 is "text 0", which ann reviewed
    assert not any(p.extra["imported_gold"] for p in recent)
    store.import_gold("youtube-spam", [("text 1", "HAM")], source="file:owner.csv")
    owned = {p.uid: p.extra["imported_gold"] for p in store.recent_points("youtube-spam", 4)}
    assert owned == {"p5": False, "p4": True, "p3": False}


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
    assert summary["imported"] == 2 and sum(summary[s] for s in SPLITS) == 2
    gold = {g.text: g for g in gold_examples(store, YOUTUBE)}
    assert set(gold) == {"great video", "my channel pls", "free iphone http://x.co"}
    assert gold["great video"].label == "SPAM" and gold["great video"].source == "file:gold.csv"
    assert gold["great video"].trusted  # the task owner's
    assert gold["my channel pls"].source == "review:correction"
    assert not gold["my channel pls"].trusted  # one untrusted reviewer's word
    assert {g.split for g in gold.values()} <= {TRAIN, CALIBRATION, EXAM}


def test_trusted_gold_comes_from_trusted_keys_or_reviewers_who_agree(store):
    store.record(prediction("p1", "text one", label="HAM"))
    store.record(verdict("p1", "down", reviewer="owner", label="SPAM", trusted=True))
    store.record(verdict("p1", "up", reviewer="ann"))  # an untrusted key disagrees: no matter
    store.record(prediction("p2", "text two", label="HAM"))
    store.record(verdict("p2", "up", reviewer="ann"))
    store.record(verdict("p2", "up", reviewer="bob"))  # two keys agree
    store.record(prediction("p3", "text three", label="HAM"))
    store.record(verdict("p3", "up", reviewer="ann"))
    store.record(verdict("p3", "down", reviewer="bob", label="SPAM"))  # two keys disagree
    store.record(prediction("p4", "text four", label="HAM"))
    store.record(prediction("p5", "text four", label="HAM", t=3.0))
    store.record(verdict("p4", "up", reviewer="ann"))
    store.record(verdict("p5", "up", reviewer="ann", t=4.0))  # one key twice: still one
    gold = {g.text: g for g in gold_examples(store, YOUTUBE)}
    assert (gold["text one"].label, gold["text one"].source) == ("SPAM", "review:trusted")
    assert (gold["text two"].label, gold["text two"].source) == ("HAM", "review:agreement")
    assert gold["text one"].trusted and gold["text two"].trusted
    assert not gold["text three"].trusted and not gold["text four"].trusted


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
