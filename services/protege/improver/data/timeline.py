"""What the task's owner watches over time: per time bucket of the newest traffic, how
many answers were served, how many the foundation model gave (route `foundation` or
`escalated`), and how many of the answers on texts with trusted gold were right.

Trusted gold only (imported, trusted keys', agreeing reviewers'): one reviewer's word
does not grade, here as in the exam.
"""

from __future__ import annotations

from protege.improver.data.gold import gold_examples
from protege.improver.data.records import text_hash
from protege.improver.data.store import ExampleStore
from protege.schemas import Timeline, TimelineBucket
from protege.taskspec import TaskSpec

FOUNDATION_ROUTES = ("foundation", "escalated")


def timeline(task: TaskSpec, store: ExampleStore, buckets: int, window: int) -> Timeline:
    """The newest `window` predictions of the task in `buckets` equal spans of time."""
    rows = store.served(task.name, window)
    if not rows:
        return Timeline(task=task.name, buckets=[])
    gold = {
        text_hash(g.text): g.label
        for g in gold_examples(store, task, store.points(task.name, limit=window))
        if g.trusted
    }
    start, end = rows[0][0], rows[-1][0]
    width = (end - start) / buckets or 1.0
    spans = [
        TimelineBucket(
            start=start + i * width,
            end=start + (i + 1) * width,
            predictions=0,
            foundation=0,
            gold=0,
            correct=0,
        )
        for i in range(buckets)
    ]
    for at, hashed, label, route in rows:
        span = spans[min(int((at - start) / width), buckets - 1)]
        span.predictions += 1
        span.foundation += route in FOUNDATION_ROUTES
        if hashed in gold:
            span.gold += 1
            span.correct += label == gold[hashed]
    return Timeline(task=task.name, buckets=spans)
