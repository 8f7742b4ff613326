"""What every benchmark shares: the machine's context, JSON results, percentiles, and
a lean HTTP load generator.

The load generator runs in its own process and speaks raw HTTP/1.1 over asyncio
streams (uvloop) with pre-encoded requests: on a 2-core machine the client shares
the cores with the server under test, so it must cost as little as it can (httpx
spends ~10x more CPU per request). It reports its own CPU per request, so that a
reader knows how much of the machine it took, and the server side is measured in
CPU ms per request too: unlike latency, that figure barely moves when other work
shares the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent


# ---------------------------------------------------------------- context and results


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What a reader needs to judge the figures: cores, CPU model, load, versions."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": load_average(),
    }


def write_results(name: str, payload: dict) -> Path:
    """bench/results/<name>.json: small, committed, so that the README's figures have a source."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def percentiles(values_ms: list[float] | np.ndarray) -> dict:
    if len(values_ms) == 0:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    values = np.asarray(values_ms, dtype=float)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def youtube_specialist(folder: Path, version: str = "bench") -> Path:
    """The tests' builder (the project's TF-IDF trainer and ONNX export), imported
    rather than copied so that tests and benchmarks build the same specialist."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from specialist_builder import build_youtube_specialist

    return build_youtube_specialist(folder, version=version)


# ---------------------------------------------------------------- load generator


class LoadClient:
    """A closed-loop load generator in a separate process, kept for a whole run so that
    each measurement pays no process start-up.

    >>> with LoadClient() as client:                          # doctest: +SKIP
    ...     client.measure("http://127.0.0.1:8000/v1/tasks/t/predict", bodies, 8, 10.0)
    """

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))

    def measure(
        self,
        url: str,
        bodies: list[bytes] | None,
        concurrency: int,
        duration_s: float,
        warmup_s: float = 1.0,
        headers: dict[str, str] | None = None,
        expect: bytes | None = None,
    ) -> dict:
        """`concurrency` keep-alive connections each send a request as soon as the last
        answer arrived (POST each of `bodies` in turn; GET when None) for `duration_s`
        after `warmup_s`. Answers that are not 200 or lack `expect` are counted as bad."""
        return self._pool.submit(
            _measure_sync,
            url,
            bodies,
            concurrency,
            duration_s,
            warmup_s,
            headers or {},
            expect,
        ).result()

    def pids(self) -> list[int]:
        """The client's process, so that CPU accounting can leave it out."""
        return [self._pool.submit(os.getpid).result()]

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _measure_sync(*args) -> dict:
    try:
        import uvloop

        return uvloop.run(_measure(*args))
    except ImportError:
        return asyncio.run(_measure(*args))


def _requests(url: str, bodies: list[bytes] | None, headers: dict[str, str]) -> list[bytes]:
    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    host = f"Host: {parts.netloc}\r\n"
    if bodies is None:
        return [f"GET {parts.path} HTTP/1.1\r\n{host}{head}\r\n".encode()]
    return [
        f"POST {parts.path} HTTP/1.1\r\n{host}{head}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"content-length:")
    if start >= 0:
        end = lower.find(b"\r\n", start)
        return status, await reader.readexactly(int(lower[start + 15 : end]))
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    raise ValueError(f"response without a length: {head[:200]!r}")


def _server_ms(body: bytes) -> float | None:
    """The gateway's own `latency_ms` field, when the answer has one (cheap bytes scan)."""
    at = body.find(b'"latency_ms":')
    if at < 0:
        return None
    end = at + 13
    while end < len(body) and body[end : end + 1] not in (b",", b"}"):
        end += 1
    return float(body[at + 13 : end])


async def _measure(
    url: str,
    bodies: list[bytes] | None,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    headers: dict[str, str],
    expect: bytes | None,
) -> dict:
    parts = urlsplit(url)
    requests = _requests(url, bodies, headers)
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    begin = clock() + warmup_s
    end = begin + duration_s
    latencies: list[float] = []
    server_ms: list[float] = []
    bad: list[str] = []

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        i = offset
        try:
            while True:
                sent = clock()
                if sent >= end:
                    return
                writer.write(requests[i % len(requests)])
                i += concurrency
                status, body = await _read_response(reader)
                done = clock()
                if sent < begin or done > end:
                    continue  # warm-up, or straddles the end of the window
                if status != 200 or (expect is not None and expect not in body):
                    bad.append(f"{status} {body[:160]!r}")
                    continue
                latencies.append((done - sent) * 1000)
                ms = _server_ms(body)
                if ms is not None:
                    server_ms.append(ms)
        finally:
            writer.close()

    cpu_before = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    client_cpu = time.process_time() - cpu_before
    total = len(latencies) + len(bad)
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "ok": len(latencies),
        "bad": len(bad),
        "bad_examples": bad[:3],
        "throughput_rps": round(len(latencies) / duration_s, 1),
        **percentiles(latencies),
        "server_latency_ms_p50": round(float(np.median(server_ms)), 3) if server_ms else None,
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(total, 1), 3),
    }


# ---------------------------------------------------------------- server CPU accounting


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (gone ones count 0).
    Read before and after a measurement: the server's CPU per request barely moves
    when other work shares the machine, unlike its latency."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_seconds_by_process(pids: list[int]) -> dict[str, float]:
    """As `cpu_seconds`, per process name (Ray's `ray::Actor.method` titles cut to the actor)."""
    import psutil

    out: dict[str, float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name().removeprefix("ray::").split(".")[0]
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def descendants(root: int, exclude: set[int]) -> list[int]:
    """`root` and its descendants, minus the subtrees rooted at `exclude`."""
    import psutil

    out, stack = [], [psutil.Process(root)]
    while stack:
        proc = stack.pop()
        if proc.pid in exclude:
            continue
        out.append(proc.pid)
        try:
            stack.extend(proc.children())
        except psutil.NoSuchProcess:
            pass
    return out
