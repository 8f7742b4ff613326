"""What one caller and one request may take: request bodies counted while they stream
in (413 past `max_body_bytes`, before more is read), and token buckets per API key
(requests) and per reviewer (verdicts) that answer 429 with Retry-After.

The buckets live in each gateway replica: with N replicas a key may make N times its
rate in all (the load balancer spreads it). Memory is bounded: at most `MAX_NAMES`
buckets, the least recently used forgotten first (a forgotten bucket starts full)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException

MAX_NAMES = 10_000  # buckets kept per limiter; keys are configured, so few in practice


class TooMany(HTTPException):
    """A 429 with Retry-After (whole seconds, rounded up, at least 1)."""

    def __init__(self, detail: str, retry_after_s: float):
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(429, detail, headers={"Retry-After": str(seconds)})


class TokenBuckets:
    """One token bucket per name: `rate` tokens a second, at most `burst` saved up.
    `take(name)` spends a token and returns 0.0, or returns the seconds until one is
    there (and spends nothing)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = MAX_NAMES,
    ):
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._max_names = max_names
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def take(self, name: str, rate: float | None = None, burst: float | None = None) -> float:
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        if rate <= 0:  # no limit
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(name, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate
            self._buckets[name] = (tokens, now)
            while len(self._buckets) > self._max_names:
                self._buckets.popitem(last=False)
        return wait


class CallerLimits:
    """Per-key request rate and per-reviewer verdict quota; an identity's own limits
    (from the keys file) replace the defaults."""

    def __init__(self, rate_per_s: float, burst: int, feedback_per_hour: int, clock=time.monotonic):
        self.requests = TokenBuckets(rate_per_s, burst, clock)
        self.feedback = TokenBuckets(feedback_per_hour / 3600.0, feedback_per_hour, clock)

    @classmethod
    def from_settings(cls, settings) -> CallerLimits:
        return cls(settings.rate_per_s, settings.rate_burst, settings.feedback_per_hour)

    def admit_request(self, identity) -> None:
        wait = self.requests.take(identity.name, identity.rate_per_s, identity.rate_burst)
        if wait:
            raise TooMany(f"API key {identity.name!r} is over its request rate", wait)

    def admit_verdict(self, reviewer) -> None:
        per_hour = reviewer.feedback_per_hour
        wait = self.feedback.take(
            reviewer.name, None if per_hour is None else per_hour / 3600.0, per_hour
        )
        if wait:
            raise TooMany(f"reviewer {reviewer.name!r} is over its hourly verdict quota", wait)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request whose Content-Length exceeds `max_bytes` is answered
    413 unread; any other body (chunked included) is counted as it streams in, and the
    read that passes the limit raises `BodyTooLarge` (a 413) instead of reading on."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_413(send, self.max_bytes)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:  # raised outside a route (which answers it as an HTTPException)
            if not started:
                await _send_413(send, self.max_bytes)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
