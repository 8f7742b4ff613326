"""When a task's next training round is due: on a retrain request, after
`retrain.every_feedback` new feedback events, or every `retrain.every_minutes` when
something new arrived. Counts are what the store holds, so several improver replicas
(or a restart) agree.
"""

from __future__ import annotations

from protege.improver.data.ledger import RoundState
from protege.taskspec import RetrainSpec


def due(state: RoundState, spec: RetrainSpec, feedback: int, events: int, now: float) -> str | None:
    """Why a round should start now (``requested``, ``feedback`` or ``timer``), or None.

    `feedback` and `events` are the task's counts of stored feedback events and of all
    stored events; the timer fires only when something arrived since the last round."""
    if state.running(now):
        return None
    if state.requested:
        return "requested"
    if spec.every_feedback and feedback - state.feedback_at_start >= spec.every_feedback:
        return "feedback"
    if (
        spec.every_minutes
        and events > state.events_at_start
        and now - (state.started_at or 0.0) >= 60.0 * spec.every_minutes
    ):
        return "timer"
    return None
