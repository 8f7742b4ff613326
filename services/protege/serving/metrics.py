"""Per-task Prometheus metrics through Ray Serve's metrics API, so that they are
exported with Serve's own (`ray_protege_*` on each node's metrics port)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]


class ServingMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "protege_predictions",
            description="Texts answered, by task, route and model.",
            tag_keys=("task", "route", "model"),
        )
        self.latency = Histogram(
            "protege_predict_latency_ms",
            description="Predict request latency (ms) by task.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("task",),
        )
        self.escalations = Counter(
            "protege_escalations",
            description="Texts the cascade sent on to the FM.",
            tag_keys=("task",),
        )
        self.shadow = Counter(
            "protege_shadow_runs",
            description="Shadow FM runs, by whether the FM agreed.",
            tag_keys=("task", "agreed"),
        )
        self.degraded = Counter(
            "protege_degraded",
            description="Escalated texts answered by the specialist because the FM could not.",
            tag_keys=("task",),
        )
        self.errors = Counter(
            "protege_errors",
            description="Failed requests by task and kind.",
            tag_keys=("task", "kind"),
        )

    def answered(self, task: str, route: str, model: str, degraded: bool = False) -> None:
        self.requests.inc(tags={"task": task, "route": route, "model": model})
        if degraded:
            self.degraded.inc(tags={"task": task})
        if route == "escalated":
            self.escalations.inc(tags={"task": task})

    def observe_latency(self, task: str, ms: float) -> None:
        self.latency.observe(ms, tags={"task": task})

    def shadow_run(self, task: str, agreed: bool) -> None:
        self.shadow.inc(tags={"task": task, "agreed": str(agreed).lower()})

    def error(self, task: str, kind: str) -> None:
        self.errors.inc(tags={"task": task, "kind": kind})


class EventLogMetrics:
    """The event producer's counters (produced, spooled, replayed, dropped)."""

    def __init__(self) -> None:
        self.events = Counter(
            "protege_events",
            description="Event-log counters: produced, spooled, replayed, dropped.",
            tag_keys=("counter",),
        )

    def count(self, name: str, n: int) -> None:
        self.events.inc(n, tags={"counter": name})
