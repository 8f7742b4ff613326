"""The record of each task's training rounds, in the example store's database: who
holds the task's training lease, when the last round started and finished, what
it decided, and whether a retrain was requested since.

The lease is what makes "one training at a time per task" hold across processes
(a `protege improver` service, an operator's `protege improver round`, a second
replica during a rollout): taking it is one conditional UPDATE, atomic on SQLite
and Postgres alike. A lease that outlives `Settings.improver_lease_s` (its holder
crashed) may be taken over.

>>> ledger = RoundLedger(sa.create_engine("sqlite://"))
>>> ledger.acquire("youtube-spam", "me", lease_s=60, feedback=0, events=0)
True
>>> ledger.acquire("youtube-spam", "someone-else", lease_s=60, feedback=0, events=0)
False
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

metadata = sa.MetaData()

rounds = sa.Table(
    "improver_rounds",
    metadata,
    sa.Column("task", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200)),  # who trains now; NULL: nobody
    sa.Column("lease_until", sa.Float),
    sa.Column("requested_at", sa.Float),  # the latest RetrainRequest not yet served
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("feedback_at_start", sa.Integer, nullable=False, default=0),
    sa.Column("events_at_start", sa.Integer, nullable=False, default=0),
    sa.Column("trigger", sa.String(32)),
    sa.Column("outcome", sa.String(32)),  # promoted | rejected | skipped | failed | interrupted
    sa.Column("version", sa.String(32)),
    sa.Column("detail", sa.Text),
)


@dataclass(frozen=True)
class RoundState:
    task: str
    holder: str | None = None
    lease_until: float | None = None
    requested_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    feedback_at_start: int = 0
    events_at_start: int = 0
    trigger: str | None = None
    outcome: str | None = None
    version: str | None = None
    detail: str | None = None

    def running(self, now: float) -> bool:
        return self.holder is not None and (self.lease_until or 0.0) > now

    @property
    def requested(self) -> bool:
        """A retrain was requested after the last round started."""
        return self.requested_at is not None and (
            self.started_at is None or self.requested_at > self.started_at
        )


class RoundLedger:
    """Per-task round state and training lease over a SQLAlchemy engine."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine)

    @classmethod
    def of(cls, store) -> RoundLedger:
        """The ledger in an ExampleStore's database."""
        return cls(store.engine)

    def state(self, task: str) -> RoundState:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rounds).where(rounds.c.task == task)).first()
        return RoundState(**row._mapping) if row else RoundState(task)

    def _ensure_row(self, task: str) -> None:
        try:
            with self.engine.begin() as conn:
                if not conn.execute(sa.select(rounds.c.task).where(rounds.c.task == task)).first():
                    conn.execute(
                        rounds.insert().values(task=task, feedback_at_start=0, events_at_start=0)
                    )
        except IntegrityError:  # inserted concurrently
            pass

    def request(self, task: str, now: float | None = None) -> None:
        """Record a retrain request made at `now` (default: now); the latest is kept."""
        self._ensure_row(task)
        at = time.time() if now is None else now
        with self.engine.begin() as conn:
            conn.execute(
                rounds.update()
                .where(
                    (rounds.c.task == task)
                    & (rounds.c.requested_at.is_(None) | (rounds.c.requested_at < at))
                )
                .values(requested_at=at)
            )

    def acquire(
        self,
        task: str,
        holder: str,
        *,
        lease_s: float,
        feedback: int,
        events: int,
        trigger: str = "manual",
    ) -> bool:
        """Take the task's training lease; False when another holder's lease is live."""
        self._ensure_row(task)
        now = time.time()
        with self.engine.begin() as conn:
            taken = conn.execute(
                rounds.update()
                .where(
                    (rounds.c.task == task)
                    & (rounds.c.holder.is_(None) | (rounds.c.lease_until < now))
                )
                .values(
                    holder=holder,
                    lease_until=now + lease_s,
                    started_at=now,
                    feedback_at_start=feedback,
                    events_at_start=events,
                    trigger=trigger,
                )
            )
            return taken.rowcount == 1

    def release(
        self,
        task: str,
        holder: str,
        *,
        outcome: str,
        version: str | None = None,
        detail: str | None = None,
    ) -> None:
        """End the holder's round with its outcome; requests made before it started are
        served by it."""
        with self.engine.begin() as conn:
            conn.execute(
                rounds.update()
                .where((rounds.c.task == task) & (rounds.c.holder == holder))
                .values(
                    holder=None,
                    lease_until=None,
                    finished_at=time.time(),
                    outcome=outcome,
                    version=version,
                    detail=(detail or "")[:4000],
                )
            )
