"""Alpha spending: the gate's significance budget, shared by every decision made on the
same exam rows.

Each round tests a new candidate on the exam. Were every test run at the full
`gate.significance`, a stream of candidates that are no better would, sooner or later,
pass by chance, and the choice of what to promote would fit the exam's particular
rows. So the decisions made on one *generation* of the exam share the budget: the
k-th runs at `spent_alpha(significance, k)` = significance * 6 / (pi^2 k^2), a series
that sums to `significance`.

The exam grows as trusted gold arrives. Once at least `exam.refresh_share` of its rows
are new since its generation began, a new generation starts and the budget with it:
most of what is tested then has never been tested. (Rows of the old generation stay in
the exam: dropping them would throw away trusted gold; the refresh share bounds how
much the new generation leans on them.)

The generations and the decisions are kept in the store's reports (kinds
`exam_generation` and `gate_decision`), so that replicas and restarts agree.

>>> use = exam_use(store, task, exam.texts)     # doctest: +SKIP
>>> use.alpha, use.decision                     # doctest: +SKIP
(0.0304, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from protege.improver.data.records import text_hash
from protege.improver.data.store import ExampleStore
from protege.improver.judge.gate import spent_alpha
from protege.taskspec import TaskSpec

GENERATION, DECISION = "exam_generation", "gate_decision"
HASH_CHARS = 16  # of a text's hash kept per exam row: collisions are negligible at 64 bits


@dataclass(frozen=True)
class ExamUse:
    """Where this round's decision falls in its exam generation's budget."""

    generation: int
    decision: int  # 1 for the generation's first decision
    alpha: float
    rows: int
    fresh_share: float  # of the exam's rows, new since the generation began
    new_generation: bool  # this round starts it

    def to_dict(self) -> dict:
        return asdict(self)


def _hashes(texts: Sequence[str]) -> set[str]:
    return {text_hash(t)[:HASH_CHARS] for t in texts}


def exam_use(store: ExampleStore, task: TaskSpec, texts: Sequence[str]) -> ExamUse:
    """The generation and the level of a decision on the exam `texts` now (nothing is
    written: `record_decision` does that once the decision is made)."""
    rows = _hashes(texts)
    generations = store.reports(task.name, GENERATION)
    if generations:
        last = generations[-1]["payload"]
        fresh = len(rows - set(last["rows"])) / max(len(rows), 1)
        if fresh < task.exam.refresh_share:
            made = sum(
                1
                for r in store.reports(task.name, DECISION)
                if r["payload"]["generation"] == last["generation"]
            )
            k = made + 1
            return ExamUse(
                last["generation"],
                k,
                spent_alpha(task.gate.significance, k),
                len(rows),
                fresh,
                False,
            )
        generation = last["generation"] + 1
    else:
        generation, fresh = 1, 1.0
    return ExamUse(generation, 1, spent_alpha(task.gate.significance, 1), len(rows), fresh, True)


def record_decision(
    store: ExampleStore,
    task: TaskSpec,
    use: ExamUse,
    texts: Sequence[str],
    *,
    version: str | None,
    passed: bool,
) -> None:
    """Spend the decision's share of the budget (and start its generation if it is new)."""
    if use.new_generation:
        store.save_report(
            task.name, GENERATION, {"generation": use.generation, "rows": sorted(_hashes(texts))}
        )
    store.save_report(task.name, DECISION, {**use.to_dict(), "version": version, "passed": passed})
