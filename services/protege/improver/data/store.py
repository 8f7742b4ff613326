"""The example store: every prediction and feedback event, gold data, cached FM scores
and saved reports, through SQLAlchemy (a SQLite file by default, Postgres by URL).

Writes are idempotent on ``event_id``: :meth:`ExampleStore.record` stores an event and
its id in one transaction, and a second delivery of the same event changes nothing.
A reviewer's repeat feedback on the same prediction replaces the earlier one (the
later by event time wins, whatever order they arrive in). Feedback that arrives
before its prediction is kept and joined when the prediction arrives, since the join
happens when examples are read.

Example
-------
>>> store = ExampleStore("sqlite://")  # in memory
>>> from protege.schemas import FeedbackEvent
>>> store.record(FeedbackEvent(prediction_id="p1", task="t", verdict="up", reviewer="ann"))
True
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from protege.improver.data.records import DataPoint, Hold, Review, text_hash
from protege.schemas import FeedbackEvent, PredictionEvent

log = logging.getLogger(__name__)

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("task", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(200), primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("text_hash", sa.String(64), nullable=False, index=True),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("confidence", sa.Float),
    sa.Column("route", sa.String(32)),
    sa.Column("served_by", sa.String(300)),
    sa.Column("foundation_label", sa.String(200)),
    sa.Column("foundation_confidence", sa.Float),
    sa.Column("specialist_label", sa.String(200)),
    sa.Column("specialist_confidence", sa.Float),
    sa.Column("timestamp", sa.Float, nullable=False),
    # The served answer's top-two probability gap: what the review queue ranks by.
    sa.Column("margin", sa.Float),
    # The served answer's top-k [[label, probability], ...] (JSON): what reviewers see.
    sa.Column("probabilities", sa.Text),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("prediction_id", sa.String(200), nullable=False, index=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("verdict", sa.String(8), nullable=False),
    sa.Column("label", sa.String(200)),
    sa.Column("comment", sa.Text),
    sa.Column("timestamp", sa.Float, nullable=False),
    # The reviewer's key holds the `trusted` role: the verdict may grade models.
    sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("prediction_id", "reviewer", name="uq_feedback_prediction_reviewer"),
)

gold = sa.Table(
    "gold",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("text_hash", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("source", sa.String(300), nullable=False),
    sa.Column("imported_at", sa.Float, nullable=False),
    sa.UniqueConstraint("task", "text_hash", name="uq_gold_task_text"),
)

fm_scores = sa.Table(
    "fm_scores",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("text_hash", sa.String(64), primary_key=True),
    sa.Column("probs", sa.Text, nullable=False),  # JSON list, in the task's label order
)

# Events deleted by retention, per task and kind: the retrain triggers count every event
# ever stored, so a prune must not make the counts go back.
pruned = sa.Table(
    "pruned_events",
    metadata,
    sa.Column("task", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

# The review console's reservations: an item handed to a reviewer is kept from the others
# until `expires_at`, or until the holder's verdict is stored (`done_at` set by the console
# when it sent the verdict). One holder per item: the primary key.
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("prediction_id", sa.String(200), primary_key=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("reserved_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
)

# Items a reviewer skipped in the console: not handed to them again.
skips = sa.Table(
    "review_skips",
    metadata,
    sa.Column("prediction_id", sa.String(200), primary_key=True),
    sa.Column("reviewer", sa.String(200), primary_key=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("skipped_at", sa.Float, nullable=False),
)

RETRACT = "retract"  # a verdict that withdraws the reviewer's earlier one: readers skip it

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(200)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)


# Columns added after a table's first release: `add_missing_columns` adds them to stores
# created before (create_all only creates missing tables).
ADDED_COLUMNS = (
    ("feedback", "trusted"),
    ("predictions", "margin"),
    ("predictions", "probabilities"),
)


def add_missing_columns(engine: sa.Engine) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for each of `ADDED_COLUMNS` a table lacks (SQLite and
    Postgres alike); idempotent, and safe when another process does it at the same time.
    Returns what it added."""
    added = []
    for table_name, column_name in ADDED_COLUMNS:
        have = {c["name"] for c in sa.inspect(engine).get_columns(table_name)}
        if column_name in have:
            continue
        column = metadata.tables[table_name].c[column_name]
        ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {ddl}")
            added.append(f"{table_name}.{column_name}")
        except sa.exc.DBAPIError:
            # Another process added it first; anything else shows up on the re-check.
            if column_name not in {c["name"] for c in sa.inspect(engine).get_columns(table_name)}:
                raise
    return added


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # One file shared by the consumer thread and CLI reads.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}


class ExampleStore:
    """Events, gold and caches of the improver, behind one SQLAlchemy engine."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.engine = sa.create_engine(url, **_engine_kwargs(url))
        if url.startswith("sqlite:///"):
            with self.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        if create:
            metadata.create_all(self.engine)
            for added in add_missing_columns(self.engine):
                log.info("store: added column %s", added)

    @classmethod
    def from_settings(cls, settings) -> ExampleStore:
        return cls(settings.store_url)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raises when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1))

    # ------------------------------------------------------------------ events

    def record(self, event: PredictionEvent | FeedbackEvent) -> bool:
        """Store one event; False when its event_id was already stored."""
        return self.record_many([event]) == 1

    def record_many(self, batch: Sequence[PredictionEvent | FeedbackEvent]) -> int:
        """Store events in one transaction, skipping ids already stored; returns how many
        were new. Returns only once they are committed: offsets may be committed after."""
        unique = list({e.event_id: e for e in batch}.values())
        if not unique:
            return 0
        try:
            with self.engine.begin() as conn:
                return self._insert(conn, unique)
        except IntegrityError:
            # Another writer stored some of them between our check and insert (a consumer
            # rebalance): fall back to one transaction per event.
            stored = 0
            for event in unique:
                try:
                    with self.engine.begin() as conn:
                        stored += self._insert(conn, [event])
                except IntegrityError:
                    log.info("event %s already stored", event.event_id)
            return stored

    def _insert(self, conn, batch: list[PredictionEvent | FeedbackEvent]) -> int:
        ids = [e.event_id for e in batch]
        seen = set(
            conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(ids))).scalars()
        )
        new = [e for e in batch if e.event_id not in seen]
        if not new:
            return 0
        now = time.time()
        conn.execute(
            events.insert(),
            [
                {"event_id": e.event_id, "kind": e.kind, "task": e.task, "received_at": now}
                for e in new
            ],
        )
        for event in new:
            if isinstance(event, PredictionEvent):
                self._insert_prediction(conn, event)
            elif isinstance(event, FeedbackEvent):
                self._upsert_feedback(conn, event)
            else:  # pragma: no cover - the consumer only hands these two
                raise TypeError(f"cannot store {type(event).__name__}")
        return len(new)

    def _insert_prediction(self, conn, e: PredictionEvent) -> None:
        exists = conn.execute(
            sa.select(predictions.c.prediction_id).where(
                predictions.c.prediction_id == e.prediction_id
            )
        ).first()
        if exists:  # the same prediction re-sent under a new event id: keep the first
            log.info("prediction %s already stored", e.prediction_id)
            return
        conn.execute(
            predictions.insert().values(
                prediction_id=e.prediction_id,
                event_id=e.event_id,
                task=e.task,
                text=e.text,
                text_hash=text_hash(e.text),
                label=e.label,
                confidence=max((p.probability for p in e.probabilities), default=None),
                route=e.route.value,
                served_by=f"{e.served_by.model}:{e.served_by.version}",
                foundation_label=e.foundation.label if e.foundation else None,
                foundation_confidence=_top(e.foundation),
                specialist_label=e.specialist.label if e.specialist else None,
                specialist_confidence=_top(e.specialist),
                timestamp=e.timestamp,
                margin=_margin(e),
                probabilities=json.dumps([[p.label, p.probability] for p in e.probabilities]),
            )
        )

    def _upsert_feedback(self, conn, e: FeedbackEvent) -> None:
        row = {
            "event_id": e.event_id,
            "prediction_id": e.prediction_id,
            "task": e.task,
            "reviewer": e.reviewer,
            "verdict": e.verdict.value,
            "label": e.label,
            "comment": e.comment,
            "timestamp": e.timestamp,
            "trusted": e.trusted,
        }
        key = (feedback.c.prediction_id == e.prediction_id) & (feedback.c.reviewer == e.reviewer)
        earlier = conn.execute(sa.select(feedback.c.id, feedback.c.timestamp).where(key)).first()
        if earlier is None:
            conn.execute(feedback.insert().values(**row))
        elif earlier.timestamp <= e.timestamp:
            conn.execute(feedback.update().where(feedback.c.id == earlier.id).values(**row))
        # else: an older verdict arriving late; the newer one stands.

    # ------------------------------------------------------------------ reads

    def counts(self, task: str | None = None) -> dict[str, int]:
        def count(table) -> int:
            query = sa.select(sa.func.count()).select_from(table)
            if task is not None:
                query = query.where(table.c.task == task)
            with self.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())

        return {
            "events": count(events),
            "predictions": count(predictions),
            "feedback": count(feedback),
            "gold": count(gold),
        }

    def event_counts(self, task: str) -> tuple[int, int]:
        """(feedback events, all events) ever stored for `task` (pruned ones included):
        what retrain triggers count."""
        counts: dict[str, int] = defaultdict(int)
        with self.engine.connect() as conn:
            for kind, n in conn.execute(
                sa.select(events.c.kind, sa.func.count())
                .where(events.c.task == task)
                .group_by(events.c.kind)
            ):
                counts[kind] += int(n)
            for kind, n in conn.execute(
                sa.select(pruned.c.kind, pruned.c.count).where(pruned.c.task == task)
            ):
                counts[kind] += int(n)
        return int(counts.get("feedback", 0)), int(sum(counts.values()))

    # ------------------------------------------------------------------ retention

    def prune(
        self,
        task: str,
        max_age_s: float | None,
        max_predictions: int | None,
        now: float | None = None,
    ) -> dict[str, int]:
        """Delete the task's predictions older than `max_age_s` or beyond the newest
        `max_predictions`, the feedback on them and feedback older than `max_age_s`, and
        the event ids older than `max_age_s` (a redelivery older than that is long
        past). Gold, FM scores and reports stay. Returns what was deleted, by table."""
        now = time.time() if now is None else now
        cutoff = now - max_age_s if max_age_s else None
        deleted = {"predictions": 0, "feedback": 0, "events": 0}
        with self.engine.begin() as conn:
            conn.execute(  # reservations past their time hold nothing
                reservations.delete().where(
                    (reservations.c.task == task) & (reservations.c.expires_at <= now)
                )
            )
            old = predictions.c.task == task
            keep_from = cutoff
            if max_predictions:
                # The timestamp of the newest prediction past the size limit.
                edge = conn.execute(
                    sa.select(predictions.c.timestamp)
                    .where(old)
                    .order_by(predictions.c.timestamp.desc())
                    .offset(max_predictions - 1)
                    .limit(1)
                ).scalar()
                if edge is not None:
                    keep_from = edge if keep_from is None else max(keep_from, edge)
            if keep_from is not None:
                gone = sa.select(predictions.c.prediction_id).where(
                    old & (predictions.c.timestamp < keep_from)
                )
                deleted["feedback"] += conn.execute(
                    feedback.delete().where(feedback.c.prediction_id.in_(gone))
                ).rowcount
                conn.execute(skips.delete().where(skips.c.prediction_id.in_(gone)))
                deleted["predictions"] = conn.execute(
                    predictions.delete().where(old & (predictions.c.timestamp < keep_from))
                ).rowcount
            if cutoff is not None:
                deleted["feedback"] += conn.execute(
                    feedback.delete().where(
                        (feedback.c.task == task) & (feedback.c.timestamp < cutoff)
                    )
                ).rowcount
                stale = (events.c.task == task) & (events.c.received_at < cutoff)
                for kind, n in conn.execute(
                    sa.select(events.c.kind, sa.func.count()).where(stale).group_by(events.c.kind)
                ).all():
                    self._tally_pruned(conn, task, kind, int(n))
                deleted["events"] = conn.execute(events.delete().where(stale)).rowcount
        if any(deleted.values()):
            log.info("%s: retention deleted %s", task, deleted)
        return deleted

    def _tally_pruned(self, conn, task: str, kind: str, n: int) -> None:
        key = (pruned.c.task == task) & (pruned.c.kind == kind)
        if conn.execute(sa.select(pruned.c.count).where(key)).first() is None:
            conn.execute(pruned.insert().values(task=task, kind=kind, count=n))
        else:
            conn.execute(pruned.update().where(key).values(count=pruned.c.count + n))

    def foundation_answers(self, task: str, hashes: Iterable[str]) -> dict[str, tuple[str, float]]:
        """text hash -> (label, confidence) of the latest prediction event of the task that
        carried an FM answer (escalations and shadow runs: answers already paid for)."""
        wanted = list(hashes)
        found: dict[str, tuple[str, float]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                rows = conn.execute(
                    sa.select(
                        predictions.c.text_hash,
                        predictions.c.foundation_label,
                        predictions.c.foundation_confidence,
                    )
                    .where(
                        (predictions.c.task == task)
                        & predictions.c.foundation_label.is_not(None)
                        & predictions.c.text_hash.in_(wanted[start : start + 500])
                    )
                    .order_by(predictions.c.timestamp)
                )
                for h, label, confidence in rows:
                    found[h] = (label, 1.0 if confidence is None else float(confidence))
        return found

    def event_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(events.c.event_id)).scalars())

    def tasks(self) -> list[str]:
        with self.engine.connect() as conn:
            names = set(conn.execute(sa.select(predictions.c.task).distinct()).scalars())
            names |= set(conn.execute(sa.select(gold.c.task).distinct()).scalars())
        return sorted(names)

    def feedback_rows(self, task: str) -> list[dict]:
        """Every reviewer's latest verdict row, retractions included (raw)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(feedback).where(feedback.c.task == task).order_by(feedback.c.timestamp)
            )
            return [dict(r._mapping) for r in rows]

    def points(self, task: str, limit: int | None = None) -> list[DataPoint]:
        """One data point per distinct text of the task's newest `limit` predictions
        (all when None), with every reviewer's latest verdict on any prediction of that
        text. The window is cut in SQL: a round reads `limit` rows, not the history."""
        with self.engine.connect() as conn:
            query = (
                sa.select(predictions)
                .where(predictions.c.task == task)
                .order_by(predictions.c.timestamp.desc())
            )
            if limit:
                query = query.limit(limit)
            rows = conn.execute(query).all()[::-1]  # oldest first
            latest: dict[str, object] = {}
            for r in rows:  # later predictions of the same text replace earlier ones
                latest[r.text_hash] = r
            reviews = self._reviews(conn, task, list(latest) if limit else None)
        return [_point(r, reviews.get(h, ())) for h, r in latest.items()]

    def recent_points(self, task: str, window: int) -> list[DataPoint]:
        """The task's `window` newest predictions, newest first, one per distinct text
        (its newest prediction), with every verdict on that text: what the review queue
        ranks. `extra` has the prediction's `confidence`, `margin`, `route`, `timestamp`,
        and `imported_gold`: the task's owner already labeled the text."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(predictions)
                .where(predictions.c.task == task)
                .order_by(predictions.c.timestamp.desc())
                .limit(window)
            ).all()
            newest: dict[str, object] = {}
            for r in rows:
                newest.setdefault(r.text_hash, r)
            reviews = self._reviews(conn, task, list(newest))
            labeled = set(
                conn.execute(
                    sa.select(gold.c.text_hash).where(
                        (gold.c.task == task) & gold.c.text_hash.in_(list(newest))
                    )
                ).scalars()
            )
        points = [_point(r, reviews.get(h, ())) for h, r in newest.items()]
        for x in points:
            x.extra["imported_gold"] = x.extra["text_hash"] in labeled
        return points

    @staticmethod
    def _reviews(conn, task: str, hashes: list[str] | None = None) -> dict[str, list[Review]]:
        """text hash -> each reviewer's latest verdicts on the predictions of that text
        (a retracted verdict is no verdict)."""
        query = (
            sa.select(feedback, predictions.c.text_hash, predictions.c.label.label("served"))
            .join(predictions, predictions.c.prediction_id == feedback.c.prediction_id)
            .where((feedback.c.task == task) & (feedback.c.verdict != RETRACT))
        )
        found: dict[str, list[Review]] = defaultdict(list)
        chunks = (
            [None] if hashes is None else [hashes[i : i + 500] for i in range(0, len(hashes), 500)]
        )
        for chunk in chunks:
            part = query if chunk is None else query.where(predictions.c.text_hash.in_(chunk))
            for r in conn.execute(part):
                found[r.text_hash].append(
                    Review(r.reviewer, r.verdict, r.served, r.label, r.timestamp, bool(r.trusted))
                )
        return found

    def point_of(self, task: str, prediction_id: str) -> DataPoint | None:
        """One prediction as a data point, with every verdict on its text and
        `extra` as `recent_points` gives it; None when the store does not hold it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(predictions).where(
                    (predictions.c.task == task) & (predictions.c.prediction_id == prediction_id)
                )
            ).first()
            if row is None:
                return None
            reviews = self._reviews(conn, task, [row.text_hash])
            labeled = conn.execute(
                sa.select(gold.c.id).where(
                    (gold.c.task == task) & (gold.c.text_hash == row.text_hash)
                )
            ).first()
        x = _point(row, reviews.get(row.text_hash, ()))
        x.extra["imported_gold"] = labeled is not None
        return x

    def reviews_by_text(self, task: str) -> dict[str, list[Review]]:
        """text hash -> every reviewer's latest verdict on the task's predictions of it."""
        with self.engine.connect() as conn:
            return dict(self._reviews(conn, task))

    def reviewer_counts(self, task: str, since: float) -> list[dict]:
        """Per reviewer of the task: verdicts in all (`total`), since `since` (`recent`),
        and thumbs-down among them (`down`); retracted verdicts do not count."""
        query = (
            sa.select(
                feedback.c.reviewer,
                sa.func.count().label("total"),
                sa.func.sum(sa.case((feedback.c.timestamp >= since, 1), else_=0)).label("recent"),
                sa.func.sum(sa.case((feedback.c.verdict == "down", 1), else_=0)).label("down"),
            )
            .where((feedback.c.task == task) & (feedback.c.verdict != RETRACT))
            .group_by(feedback.c.reviewer)
            .order_by(feedback.c.reviewer)
        )
        with self.engine.connect() as conn:
            return [
                {
                    "reviewer": r.reviewer,
                    "total": int(r.total),
                    "recent": int(r.recent or 0),
                    "down": int(r.down or 0),
                }
                for r in conn.execute(query)
            ]

    def served(self, task: str, limit: int) -> list[tuple[float, str, str, str | None]]:
        """(timestamp, text hash, served label, route) of the task's newest `limit`
        predictions, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    predictions.c.timestamp,
                    predictions.c.text_hash,
                    predictions.c.label,
                    predictions.c.route,
                )
                .where(predictions.c.task == task)
                .order_by(predictions.c.timestamp.desc())
                .limit(limit)
            ).all()
        return [tuple(r) for r in reversed(rows)]

    # ------------------------------------------------------------------ reservations

    def live_holds(self, task: str, now: float) -> list[Hold]:
        """The task's unexpired reservations, each with the time of its holder's stored
        verdict on the item (`answered_at`): a finished and answered hold keeps no one out."""
        answered = (
            sa.select(feedback.c.timestamp)
            .where(
                (feedback.c.prediction_id == reservations.c.prediction_id)
                & (feedback.c.reviewer == reservations.c.reviewer)
                & (feedback.c.verdict != RETRACT)
            )
            .correlate(reservations)
            .scalar_subquery()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(reservations, answered.label("answered")).where(
                    (reservations.c.task == task) & (reservations.c.expires_at > now)
                )
            )
            return [
                Hold(
                    r.prediction_id,
                    r.reviewer,
                    r.reserved_at,
                    r.expires_at,
                    r.done_at,
                    r.answered,
                )
                for r in rows
            ]

    def hold(self, task: str, prediction_id: str, reviewer: str, until: float, now: float) -> bool:
        """Reserve the item for `reviewer` until `until`; False when another reviewer
        holds it (unexpired, and not finished with a stored verdict). Atomic across
        processes: the item is the table's primary key."""
        answered = (
            sa.select(feedback.c.id)
            .where(
                (feedback.c.prediction_id == prediction_id)
                & (feedback.c.reviewer == reservations.c.reviewer)
                & (feedback.c.verdict != RETRACT)
            )
            .correlate(reservations)
            .exists()
        )
        released = (
            (reservations.c.expires_at <= now)
            | (reservations.c.reviewer == reviewer)
            | (reservations.c.done_at.is_not(None) & answered)
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    reservations.delete().where(
                        (reservations.c.prediction_id == prediction_id) & released
                    )
                )
                conn.execute(
                    reservations.insert().values(
                        prediction_id=prediction_id,
                        task=task,
                        reviewer=reviewer,
                        reserved_at=now,
                        expires_at=until,
                    )
                )
        except IntegrityError:
            return False
        return True

    def finish_hold(self, task: str, prediction_id: str, reviewer: str, now: float) -> bool:
        """The holder sent a verdict: the hold keeps others out only until it is stored."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    reservations.update()
                    .where(
                        (reservations.c.task == task)
                        & (reservations.c.prediction_id == prediction_id)
                        & (reservations.c.reviewer == reviewer)
                    )
                    .values(done_at=now)
                ).rowcount
            )

    def skip(self, task: str, prediction_id: str, reviewer: str, now: float) -> None:
        """Release the reviewer's hold on the item and never hand it to them again."""
        with self.engine.begin() as conn:
            conn.execute(
                reservations.delete().where(
                    (reservations.c.prediction_id == prediction_id)
                    & (reservations.c.reviewer == reviewer)
                )
            )
            key = (skips.c.prediction_id == prediction_id) & (skips.c.reviewer == reviewer)
            if conn.execute(sa.select(skips.c.task).where(key)).first() is None:
                conn.execute(
                    skips.insert().values(
                        prediction_id=prediction_id, reviewer=reviewer, task=task, skipped_at=now
                    )
                )

    def skipped(self, task: str, reviewer: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(skips.c.prediction_id).where(
                        (skips.c.task == task) & (skips.c.reviewer == reviewer)
                    )
                ).scalars()
            )

    # ------------------------------------------------------------------ gold

    def import_gold(self, task: str, items: Iterable[tuple[str, str]], source: str) -> int:
        """Insert or replace (by text) gold labels; returns how many rows were written."""
        now = time.time()
        written = 0
        with self.engine.begin() as conn:
            for text, label in items:
                h = text_hash(text)
                key = (gold.c.task == task) & (gold.c.text_hash == h)
                values = {"text": text, "label": label, "source": source, "imported_at": now}
                if conn.execute(sa.select(gold.c.id).where(key)).first():
                    conn.execute(gold.update().where(key).values(**values))
                else:
                    conn.execute(gold.insert().values(task=task, text_hash=h, **values))
                written += 1
        return written

    def gold_rows(self, task: str) -> list[tuple[str, str, str]]:
        """(text, label, source) of the task's imported gold."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(gold.c.text, gold.c.label, gold.c.source)
                .where(gold.c.task == task)
                .order_by(gold.c.id)
            )
            return [tuple(r) for r in rows]

    # ------------------------------------------------------------------ FM score cache

    def get_scores(self, key: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        hashes = {text_hash(t): t for t in texts}
        found: dict[str, np.ndarray] = {}
        items = list(hashes)
        with self.engine.connect() as conn:
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                rows = conn.execute(
                    sa.select(fm_scores.c.text_hash, fm_scores.c.probs).where(
                        (fm_scores.c.key == key) & fm_scores.c.text_hash.in_(chunk)
                    )
                )
                for h, probs in rows:
                    found[hashes[h]] = np.asarray(json.loads(probs), dtype=np.float64)
        return found

    def put_scores(self, key: str, texts: Sequence[str], probs: np.ndarray) -> None:
        rows = {
            text_hash(t): json.dumps([round(float(p), 6) for p in row])
            for t, row in zip(texts, probs)
        }
        with self.engine.begin() as conn:
            have = set(
                conn.execute(
                    sa.select(fm_scores.c.text_hash).where(
                        (fm_scores.c.key == key) & fm_scores.c.text_hash.in_(list(rows))
                    )
                ).scalars()
            )
            new = [
                {"key": key, "text_hash": h, "probs": p} for h, p in rows.items() if h not in have
            ]
            if new:
                conn.execute(fm_scores.insert(), new)

    # ------------------------------------------------------------------ reports

    def save_report(self, task: str, kind: str, payload: dict, run_id: str | None = None) -> int:
        """Keep a copy of a report (an LF report per training run, the label model choice)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                reports.insert().values(
                    task=task,
                    kind=kind,
                    run_id=run_id,
                    created_at=time.time(),
                    payload=json.dumps(payload, default=_json_default),
                )
            )
            return int(result.inserted_primary_key[0])

    def reports(self, task: str, kind: str | None = None) -> list[dict]:
        query = sa.select(reports).where(reports.c.task == task).order_by(reports.c.id)
        if kind is not None:
            query = query.where(reports.c.kind == kind)
        with self.engine.connect() as conn:
            return [
                {**dict(r._mapping), "payload": json.loads(r.payload)} for r in conn.execute(query)
            ]


def _point(row, reviews) -> DataPoint:
    return DataPoint(
        text=row.text,
        uid=row.prediction_id,
        served_label=row.label,
        foundation_label=row.foundation_label,
        foundation_confidence=row.foundation_confidence,
        specialist_label=row.specialist_label,
        specialist_confidence=row.specialist_confidence,
        reviews=tuple(sorted(reviews, key=lambda v: v.timestamp)),
        extra={
            "text_hash": row.text_hash,
            "confidence": row.confidence,
            "margin": row.margin,
            "route": row.route,
            "timestamp": row.timestamp,
            "served_by": row.served_by,
            "probabilities": json.loads(row.probabilities) if row.probabilities else [],
        },
    )


def _margin(event: PredictionEvent) -> float | None:
    """Top-two probability gap of the served answer (None with a single probability)."""
    top = sorted((p.probability for p in event.probabilities), reverse=True)
    return float(top[0] - top[1]) if len(top) >= 2 else None


def _top(output) -> float | None:
    if output is None or not output.probabilities:
        return None
    return max(p.probability for p in output.probabilities)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
