"""What happened during a demo run: every answered request, every feedback sent and
every model decision, with the figures computed from them (running accuracy, the
share the foundation model answered, one row per champion). Thread-safe: the
replay and the model-event reader write to it while the display reads it.

>>> record = RunRecord("youtube-spam")
>>> record.add_outcome(Outcome(t=1.0, route="foundation", model="smollm2", version="1",
...                            correct=False, latency_ms=300.0))
>>> record.totals()["fm_share"]
1.0
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

FM_ROUTES = frozenset({"foundation", "escalated"})  # routes on which the FM answered


@dataclass(frozen=True)
class Outcome:
    """One answered request, judged against the data set's gold label."""

    t: float  # seconds since the replay began, when the answer came back
    route: str  # specialist | foundation | escalated
    model: str
    version: str
    correct: bool
    latency_ms: float

    @property
    def by_fm(self) -> bool:
        return self.route in FM_ROUTES


@dataclass(frozen=True)
class Decision:
    """A ModelEvent from the improver or an operator: promoted, rejected or rolled back."""

    t: float
    action: str
    model: str
    version: str
    accuracy: float | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Phase:
    """The requests answered while one champion (or none: day 0) was in charge."""

    name: str
    start: float
    end: float
    requests: int
    accuracy: float | None
    fm_share: float | None
    p50_latency_ms: float | None


@dataclass
class RunRecord:
    task: str
    started_at: float = field(default_factory=time.time)  # wall clock, for the file names
    outcomes: list[Outcome] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    feedback_sent: int = 0
    feedback_down: int = 0
    errors: Counter = field(default_factory=Counter)  # kind -> count
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ writing

    def add_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def add_feedback(self, verdict: str) -> None:
        with self._lock:
            self.feedback_sent += 1
            self.feedback_down += verdict == "down"

    def add_decision(self, decision: Decision) -> None:
        with self._lock:
            self.decisions.append(decision)

    def add_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> tuple[list[Outcome], list[Decision]]:
        with self._lock:
            return list(self.outcomes), list(self.decisions)

    @property
    def promotions(self) -> list[Decision]:
        return [d for d in self.snapshot()[1] if d.action == "promoted"]

    def totals(self, recent: int = 100) -> dict:
        """Counts and rates over the whole run, and over the last `recent` requests."""
        outcomes, decisions = self.snapshot()
        actions = Counter(d.action for d in decisions)
        last = outcomes[-recent:]
        return {
            "requests": len(outcomes),
            "accuracy": _mean([o.correct for o in outcomes]),
            "fm_share": _mean([o.by_fm for o in outcomes]),
            "recent_accuracy": _mean([o.correct for o in last]),
            "recent_fm_share": _mean([o.by_fm for o in last]),
            "recent_window": len(last),
            "feedback": self.feedback_sent,
            "feedback_down": self.feedback_down,
            "training_runs": actions["promoted"] + actions["rejected"],
            "promotions": actions["promoted"],
            "rejections": actions["rejected"],
            "rollbacks": actions["rolled_back"],
            "errors": sum(self.errors.values()),
            "first_promotion_s": next((d.t for d in decisions if d.action == "promoted"), None),
        }

    def series(self, window: int = 100) -> dict[str, np.ndarray]:
        """Running accuracy and FM share over the last `window` answers, at each answer."""
        outcomes = sorted(self.snapshot()[0], key=lambda o: o.t)
        t = np.array([o.t for o in outcomes], dtype=float)
        correct = np.array([o.correct for o in outcomes], dtype=float)
        fm = np.array([o.by_fm for o in outcomes], dtype=float)
        return {"t": t, "accuracy": _rolling(correct, window), "fm_share": _rolling(fm, window)}

    def phases(self) -> list[Phase]:
        """One row per champion: day 0 (the FM alone), then after each promotion or rollback."""
        outcomes, decisions = self.snapshot()
        changes = sorted(
            (d for d in decisions if d.action in ("promoted", "rolled_back")), key=lambda d: d.t
        )
        bounds = [(0.0, "day 0 (no specialist)")] + [
            (d.t, f"{d.model} v{d.version} {d.action.replace('_', ' ')}") for d in changes
        ]
        end_of_run = max([o.t for o in outcomes], default=0.0)
        rows = []
        for i, (start, name) in enumerate(bounds):
            until = bounds[i + 1][0] if i + 1 < len(bounds) else float("inf")
            end = min(until, max(end_of_run, start))
            inside = [o for o in outcomes if start <= o.t < until]
            latencies = [o.latency_ms for o in inside]
            rows.append(
                Phase(
                    name=name,
                    start=start,
                    end=end,
                    requests=len(inside),
                    accuracy=_mean([o.correct for o in inside]),
                    fm_share=_mean([o.by_fm for o in inside]),
                    p50_latency_ms=float(np.median(latencies)) if latencies else None,
                )
            )
        return rows

    def to_dict(self) -> dict:
        _outcomes, decisions = self.snapshot()
        return {
            "task": self.task,
            "started_at": self.started_at,
            "totals": self.totals(),
            "phases": [asdict(p) for p in self.phases()],
            "decisions": [asdict(d) for d in decisions],
            "errors": dict(self.errors),
        }


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each position (fewer at the start)."""
    if values.size == 0:
        return values
    sums = np.cumsum(values)
    lagged = (
        np.concatenate([np.zeros(window), sums[:-window]])[: values.size]
        if window < values.size
        else np.zeros(values.size)
    )
    counts = np.minimum(np.arange(1, values.size + 1), window)
    return (sums - lagged) / counts
