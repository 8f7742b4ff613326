"""Serving benchmark: the specialist path of `POST /v1/tasks/youtube-spam/predict`
through the Ray Serve app, against plain uvicorn serving the same ONNX model.

Why this shape. Ray Serve buys replicas, batching across callers, a cluster and
hot swaps, and costs a proxy hop and its own bookkeeping per request; the issue's
targets (latency <= 2x, throughput >= 0.5x plain uvicorn) say how much of that we
accept. Every figure is measured in one run of this script, back to back:

- `plain`: uvicorn + FastAPI calling `Specialist.predict_proba` in the handler, the
  least anyone would write (1 worker, its own process).
- `gateway`: Protégé's own API and gateway core (auth, signed ids, micro-batcher,
  router, event producer) under the same plain uvicorn, without Ray. The step
  from `plain` to `gateway` is our code's cost; from `gateway` to `serve` is Ray
  Serve's.
- `serve`: the real app (`start_serve`), with Serve's default proxy, then with
  fast ingress (direct ingress + HA proxy + gRPC), each with event logging on
  (embedded Tansu broker), and once with event logging off.

Fairness on 2 cores: the load generator is a lean raw-HTTP asyncio client in its
own process (bench/common.py) and reports its CPU per request; each Serve figure is
taken right after the `plain` figure at the same concurrency, under the same
background; and each server's CPU ms per request is reported, the figure that
other work on the machine moves least. Texts are youtube test comments the
specialist is confident about, so every answer comes from the specialist path;
an answer whose `route` is not `specialist` is counted as bad.

    python bench/serving.py                  # ~8 minutes on 2 cores
    python bench/serving.py --duration 3     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import BaseModel

from protege.events.broker import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    LoadClient,
    cpu_seconds,
    cpu_seconds_by_process,
    descendants,
    machine,
    ratio,
    write_results,
    youtube_specialist,
)

TASK = "youtube-spam"
PREDICT = f"/v1/tasks/{TASK}/predict"
CONCURRENCY = (1, 8, 32)
API_KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
EXPECT = b'"route":"specialist"'
TARGETS = {
    "latency_ratio_max": 2.0,
    "throughput_ratio_min": 0.5,
    "events_throughput_ratio_min": 0.9,
}


# ---------------------------------------------------------------- the two uvicorn servers


class PlainBody(BaseModel):
    text: str


def plain_app(folder: Path):
    """The baseline: FastAPI calling the ONNX specialist in the handler, nothing else."""
    import numpy as np
    from fastapi import FastAPI

    from protege.artifact import Specialist

    specialist = Specialist(folder)
    app = FastAPI()

    @app.post(PREDICT)
    async def predict(body: PlainBody) -> dict:
        probs = specialist.predict_proba([body.text])[0]
        best = int(np.argmax(probs))
        return {
            "label": specialist.labels[best],
            "confidence": float(probs[best]),
            "route": "specialist",
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


class NoFoundation:
    """The benchmark's texts never reach the FM; loading it would only cost memory."""

    ref = None

    async def score(self, task, texts, adapter=None):
        raise RuntimeError("a benchmark text was escalated to the FM")

    async def ready(self):
        raise RuntimeError("no FM in this benchmark server")


def gateway_app(settings):
    """Protégé's API and gateway core without Ray, the way the Serve replica builds them."""
    from protege.serving.api import build_api
    from protege.serving.auth import ApiKeys
    from protege.serving.gateway import GatewayCore
    from protege.serving.prediction_ids import PredictionIds
    from protege.serving.specialists import SpecialistSlots

    tasks = settings.load_tasks()
    slots = SpecialistSlots(tasks, settings)
    slots.load_local()
    publish = None
    if settings.kafka_bootstrap:
        from protege.events.producer import EventProducer

        publish = EventProducer(settings).start().publish
    core = GatewayCore(
        tasks, NoFoundation(), slots, PredictionIds.from_settings(settings), publish=publish
    )
    return build_api(core, ApiKeys.from_settings(settings), settings=settings)


def bench_settings(
    home: Path, port: int, kafka: str | None, topic: str = "bench.predictions", shadow: bool = False
):
    """Auth on, as in production. `shadow`: the shipped tasks file, whose shadow_rate
    sends a share of specialist answers to the FM too; else the same file with
    shadow_rate 0 for this task, so that the specialist path alone is measured."""
    from protege.settings import Settings

    return Settings(
        home=home,
        http_port=port,
        api_keys=f"{API_KEY}=predict",
        signing_secret="bench-secret-0123456789",
        rate_per_s=0,  # one key drives all the load here: measure the app, not its limit
        max_queued_requests=-1,  # the load generator's concurrency bounds the queue
        kafka_bootstrap=kafka,
        kafka_topic_predictions=topic,
        tasks_file=home / ("tasks-shipped.yaml" if shadow else "tasks-no-shadow.yaml"),
    )


def write_tasks_files(home: Path) -> float:
    """The shipped tasks file, and a copy with this task's shadow_rate at 0; returns the shipped rate."""
    import yaml

    from protege.taskspec import DEFAULT_TASKS_FILE

    raw = yaml.safe_load(DEFAULT_TASKS_FILE.read_text(encoding="utf-8"))
    (home / "tasks-shipped.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    task = next(t for t in raw["tasks"] if t["name"] == TASK)
    shipped = float(task.get("routing", {}).get("shadow_rate", 0.0))
    task.setdefault("routing", {})["shadow_rate"] = 0.0
    (home / "tasks-no-shadow.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return shipped


def serve_main(kind: str, home: Path, port: int, kafka: str | None, topic: str) -> None:
    """Entry point of a server subprocess (`--server plain|gateway`)."""
    import uvicorn

    settings = bench_settings(home, port, kafka, topic)
    app = (
        plain_app(settings.models_dir / TASK / "current")
        if kind == "plain"
        else gateway_app(settings)
    )
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


class Server:
    """A uvicorn server in its own process, stopped on exit."""

    def __init__(
        self,
        kind: str,
        home: Path,
        kafka: str | None = None,
        topic: str = "bench.predictions",
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kafka = kafka
        command = [
            sys.executable,
            __file__,
            "--server",
            kind,
            "--home",
            str(home),
            "--port",
            str(self.port),
            "--topic",
            topic,
        ] + (["--kafka", kafka] if kafka else [])
        self.log = open(home / f"{kind}-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait(self, timeout_s: float = 120.0) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


# ---------------------------------------------------------------- measuring


class Bench:
    def __init__(
        self, client: LoadClient, bodies: list[bytes], duration_s: float, own_pids: set[int]
    ):
        self.client, self.bodies, self.duration_s, self.own_pids = (
            client,
            bodies,
            duration_s,
            own_pids,
        )
        self.rows: list[dict] = []

    def run(
        self,
        name: str,
        url: str,
        pids: list[int],
        concurrency: int,
        path: str = PREDICT,
        broker_pid: int | None = None,
    ) -> dict:
        """One figure; `pids` are the server's processes, whose CPU is charged to it."""
        before, broker_before = cpu_seconds(pids), cpu_seconds([broker_pid] if broker_pid else [])
        by_process = cpu_seconds_by_process(pids) if len(pids) > 1 else {}
        warmup = 1.0
        result = self.client.measure(
            url + path,
            self.bodies if path == PREDICT else None,
            concurrency,
            self.duration_s,
            warmup_s=warmup,
            headers=HEADERS,
            expect=EXPECT if path == PREDICT else None,
        )
        requests = max(result["ok"] + result["bad"], 1)
        # CPU over warm-up + window, per request in the window: warm-up runs at the same rate.
        scale = self.duration_s / (self.duration_s + warmup)
        result["server_cpu_ms_per_request"] = round(
            (cpu_seconds(pids) - before) * scale * 1000 / requests, 3
        )
        if by_process:  # Ray: where the CPU goes, per process, in ms per request
            after = cpu_seconds_by_process(pids)
            spent = {
                name: (after[name] - by_process.get(name, 0.0)) * scale * 1000 / requests
                for name in after
            }
            result["server_cpu_ms_per_request_by_process"] = {
                name: round(ms, 3)
                for name, ms in sorted(spent.items(), key=lambda kv: -kv[1])
                if ms >= 0.05
            }
        if broker_pid:
            result["broker_cpu_ms_per_request"] = round(
                (cpu_seconds([broker_pid]) - broker_before) * scale * 1000 / requests, 3
            )
        row = {"server": name, "path": path, **result}
        self.rows.append(row)
        print(
            f"  {name:<22} {path.split('/')[-1]:<8} c={concurrency:<3} p50 {result['p50_ms']} ms  "
            f"p99 {result['p99_ms']} ms  {result['throughput_rps']} req/s  "
            f"server {result['server_cpu_ms_per_request']} CPU ms/req  bad {result['bad']}",
            flush=True,
        )
        if result["bad"]:
            print(f"    bad answers, e.g. {result['bad_examples'][:1]}", flush=True)
        return row

    def ray_pids(self) -> list[int]:
        return descendants(os.getpid(), exclude=self.own_pids | set(self.client.pids()))


def confident_bodies(folder: Path, margin: float = 0.05) -> tuple[list[bytes], float]:
    """Youtube test texts the specialist answers alone (confidence >= threshold + margin)."""
    from protege import datasets
    from protege.artifact import Specialist
    from protege.settings import Settings

    specialist = Specialist(folder)
    threshold = specialist.meta.threshold or Settings().load_tasks()[TASK].routing.threshold
    test = datasets.load(TASK, "test")
    confidence = specialist.predict_proba(test.texts).max(axis=1)
    texts = [t for t, c in zip(test.texts, confidence) if c >= threshold + margin]
    return [json.dumps({"text": t}).encode() for t in texts], threshold


def events_logged(bootstrap: str, topic: str, timeout_s: float = 15.0) -> int:
    """Records on `topic`, read from the start with no consumer group (Tansu's group
    join is slow and its latest offsets are off by a batch)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            return 0
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        count, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            if not batch:
                break
            count += sum(len(records) for records in batch.values())
        return count
    finally:
        consumer.close()


def _answers_http(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def replica_port(pids: list[int]) -> int | None:
    """The port the Gateway replica itself listens on (direct ingress), if any."""
    import psutil

    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.name().startswith("ray::ServeReplica:bench:Gateway"):
                for conn in proc.net_connections("tcp"):  # its Ray RPC ports too: ask each
                    if conn.status == "LISTEN" and _answers_http(conn.laddr.port):
                        return conn.laddr.port

        except psutil.NoSuchProcess:
            continue
    return None


def serve_phase(
    bench: Bench,
    home: Path,
    plain: Server,
    name: str,
    fast: bool,
    kafka: str | None,
    broker_pid: int | None,
    concurrency: tuple[int, ...],
    healthz: bool = True,
    shadow: bool = False,
) -> dict:
    """Start the Serve app, measure it next to `plain` at each concurrency, stop it."""
    from protege.events.topics import ensure_topics
    from protege.serving.launch import start_serve, stop_serve

    topic = f"bench.predictions.{name}"
    settings = bench_settings(home, free_port(), kafka, topic, shadow=shadow)
    if kafka:
        ensure_topics(settings)
    started = time.monotonic()
    try:
        url = start_serve(settings, app_name="bench", fast_ingress=fast)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the other configurations still run
        print(f"  {name}: the Serve app did not start: {exc!r}"[:2000], flush=True)
        stop_serve()
        return {"name": name, "started": False, "error": repr(exc)[:2000]}
    phase = {
        "name": name,
        "started": True,
        "fast_ingress": fast,
        "event_logging": bool(kafka),
        "shadow": shadow,
        "startup_s": round(time.monotonic() - started, 1),
    }
    pids = bench.ray_pids()
    before = cpu_seconds(pids)
    time.sleep(3.0)
    phase["idle_cpu_cores"] = round((cpu_seconds(pids) - before) / 3.0, 3)  # Ray's own background
    print(
        f"  {name}: up in {phase['startup_s']} s at {url}; idle, Ray uses {phase['idle_cpu_cores']} cores",
        flush=True,
    )
    try:
        probe = httpx.post(
            url + PREDICT,
            json={"text": "check out my channel, subscribe!"},
            headers=HEADERS,
            timeout=30,
        )
        phase["probe"] = {"status": probe.status_code, "body": probe.text[:300]}
        if probe.status_code == 200:
            for c in concurrency:
                bench.run("plain", plain.url, [plain.process.pid], c)
                bench.run(name, url, bench.ray_pids(), c, broker_pid=broker_pid)
            if healthz:
                bench.run(name, url, bench.ray_pids(), 1, path="/healthz")
            replica = replica_port(bench.ray_pids()) if fast and healthz else None
            if replica:  # direct ingress: the replica's own port, skipping HAProxy
                phase["replica_port"] = replica
                for c in (1, 32):
                    bench.run(
                        f"{name}-replica",
                        f"http://127.0.0.1:{replica}",
                        bench.ray_pids(),
                        c,
                        broker_pid=broker_pid,
                    )
        else:
            print(f"  {name}: predict answered {probe.status_code}: {probe.text[:300]}", flush=True)
        if kafka:
            time.sleep(1.0)  # the producer's linger and acks
            phase["events_logged"] = events_logged(kafka, topic)
            print(f"  {name}: {phase['events_logged']} prediction events on {topic}", flush=True)
    finally:
        stop_serve()
    return phase


# ---------------------------------------------------------------- the report


def find(rows: list[dict], server: str, c: int, path: str = PREDICT) -> dict | None:
    """The last figure for (server, c, path); `plain` is measured once per phase, so for
    a Serve row the `plain` row just before it is its partner."""
    matches = [
        r for r in rows if r["server"] == server and r["concurrency"] == c and r["path"] == path
    ]
    return matches[-1] if matches else None


def paired(rows: list[dict], server: str, c: int) -> tuple[dict, dict] | None:
    for i, row in enumerate(rows):
        if row["server"] == server and row["concurrency"] == c and row["path"] == PREDICT:
            before = [r for r in rows[:i] if r["server"] == "plain" and r["concurrency"] == c]
            if before:
                return row, before[-1]
    return None


def summarize(rows: list[dict], configs: list[str]) -> dict:
    summary: dict = {}
    for name in configs:
        per_c = {}
        for c in CONCURRENCY:
            pair = paired(rows, name, c)
            if pair:
                serve, plain = pair
                per_c[c] = {
                    "latency_ratio_p50": ratio(serve["p50_ms"], plain["p50_ms"]),
                    "latency_ratio_p99": ratio(serve["p99_ms"], plain["p99_ms"]),
                    "throughput_ratio": ratio(serve["throughput_rps"], plain["throughput_rps"]),
                    "cpu_per_request_ratio": ratio(
                        serve["server_cpu_ms_per_request"], plain["server_cpu_ms_per_request"]
                    ),
                }
        if per_c:
            summary[name] = per_c
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per figure")
    parser.add_argument(
        "--no-fast", action="store_true", help="skip the fast-ingress configurations"
    )
    parser.add_argument("--server", choices=["plain", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kafka", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench.predictions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        return serve_main(args.server, args.home, args.port, args.kafka, args.topic)

    from protege.events.broker import EmbeddedBroker
    from protege.events.topics import ensure_topics

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.monotonic()
    context = {"machine_at_start": machine(), "duration_s_per_figure": args.duration}
    print(
        f"load average at start: {context['machine_at_start']['load_average_1_5_15']}", flush=True
    )
    home = Path(tempfile.mkdtemp(prefix="protege-bench-"))
    shipped_shadow = write_tasks_files(home)
    folder = youtube_specialist(home / "models" / TASK / "current")
    bodies, threshold = confident_bodies(folder)
    context.update(texts=len(bodies), threshold=threshold, shipped_shadow_rate=shipped_shadow)
    print(
        f"{len(bodies)} confident youtube test texts (specialist confidence >= {threshold} + 0.05)",
        flush=True,
    )

    broker = EmbeddedBroker().start()
    ensure_topics(bench_settings(home, 0, broker.bootstrap, "bench.predictions.gateway"))
    gateway_topic = "bench.predictions.gateway"
    servers = {
        "plain": Server("plain", home),
        "gateway": Server("gateway", home, broker.bootstrap, gateway_topic),
        "gateway-no-events": Server("gateway", home),
        "gateway-no-wait": Server(
            "gateway",
            home,
            broker.bootstrap,
            gateway_topic,
            env={"PROTEGE_SPECIALIST_BATCH_WAIT_S": "0"},
        ),
    }
    phases = []
    try:
        for server in servers.values():
            server.wait()
        own = {s.process.pid for s in servers.values()} | {broker.pid}
        with LoadClient() as client:
            bench = Bench(client, bodies, args.duration, own)
            print("\nplain uvicorn vs Protégé's gateway on uvicorn (no Ray; no FM)", flush=True)
            for c in CONCURRENCY:
                for name, server in servers.items():
                    if name == "gateway-no-wait" and c == 8:
                        continue  # the micro-batch wait matters alone (c=1) and full (c=32)
                    bench.run(
                        name,
                        server.url,
                        [server.process.pid],
                        c,
                        broker_pid=broker.pid if server.kafka else None,
                    )
            for name in ("plain", "gateway"):
                bench.run(name, servers[name].url, [servers[name].process.pid], 1, path="/healthz")
            plain, kafka = servers["plain"], broker.bootstrap
            print("\nRay Serve, default proxy, event logging on", flush=True)
            phases.append(
                serve_phase(bench, home, plain, "serve", False, kafka, broker.pid, CONCURRENCY)
            )
            print("\nRay Serve, default proxy, event logging off", flush=True)
            phases.append(
                serve_phase(
                    bench, home, plain, "serve-no-events", False, None, None, (8, 32), healthz=False
                )
            )
            if not args.no_fast:  # last: their environment variables stay set in this process
                print("\nRay Serve, fast ingress, event logging on", flush=True)
                phases.append(
                    serve_phase(
                        bench, home, plain, "serve-fast", True, kafka, broker.pid, CONCURRENCY
                    )
                )
                print(
                    f"\nRay Serve, fast ingress, event logging on, shipped shadow_rate {shipped_shadow}",
                    flush=True,
                )
                phases.append(
                    serve_phase(
                        bench,
                        home,
                        plain,
                        "serve-fast-shadow",
                        True,
                        kafka,
                        broker.pid,
                        (32,),
                        healthz=False,
                        shadow=True,
                    )
                )
    finally:
        for server in servers.values():
            server.stop()
        broker.stop()
    context["machine_at_end"] = machine()
    context["wall_s"] = round(time.monotonic() - t0, 1)
    report(bench.rows, phases, context)


def report(rows: list[dict], phases: list[dict], context: dict) -> None:
    """Print the ratios and write bench/results/serving.json."""
    summary = summarize(
        rows, ["gateway", "serve", "serve-no-events", "serve-fast", "serve-fast-shadow"]
    )
    compare = {}
    for what, on, off in (
        ("event logging", "gateway", "gateway-no-events"),
        ("event logging", "serve", "serve-no-events"),
        ("micro-batch wait 2 ms", "gateway", "gateway-no-wait"),
        ("shipped shadow rate", "serve-fast-shadow", "serve-fast"),
    ):
        for c in CONCURRENCY:
            a, b = find(rows, on, c), find(rows, off, c)
            if a and b:
                compare[f"{what}: {on} / {off}, c={c}"] = {
                    "throughput_ratio": ratio(a["throughput_rps"], b["throughput_rps"]),
                    "p50_ratio": ratio(a["p50_ms"], b["p50_ms"]),
                    "cpu_per_request_ratio": ratio(
                        a["server_cpu_ms_per_request"], b["server_cpu_ms_per_request"]
                    ),
                }
    between = {}
    for name in (
        "plain",
        "gateway-no-wait",
        "gateway",
        "serve",
        "serve-fast",
        "serve-fast-replica",
    ):
        predict, health = find(rows, name, 1), find(rows, name, 1, "/healthz")
        if predict:
            between[name] = {
                "predict_p50_ms": predict["p50_ms"],
                "healthz_p50_ms": health and health["p50_ms"],
                "gateway_core_p50_ms": predict["server_latency_ms_p50"],
                "cpu_ms_per_request": predict["server_cpu_ms_per_request"],
            }
    path = write_results(
        "serving",
        {
            **context,
            "targets": TARGETS,
            "phases": phases,
            "ratios_vs_plain": summary,
            "on_vs_off": compare,
            "what_stands_between_c1": between,
            "rows": rows,
        },
    )

    print("\nRatios vs plain uvicorn (each figure paired with the plain one taken just before it)")
    print(
        f"  targets: latency p50 ratio <= {TARGETS['latency_ratio_max']}, "
        f"throughput ratio >= {TARGETS['throughput_ratio_min']}"
    )
    for name, per_c in summary.items():
        for c, r in per_c.items():
            print(
                f"  {name:<18} c={c:<3} latency p50 x{r['latency_ratio_p50']}  "
                f"p99 x{r['latency_ratio_p99']}  "
                f"throughput x{r['throughput_ratio']}  server CPU/request x{r['cpu_per_request_ratio']}"
            )
    print(
        f"\nOn vs off (event logging target: throughput ratio >= {TARGETS['events_throughput_ratio_min']})"
    )
    for key, r in compare.items():
        print(
            f"  {key}: throughput x{r['throughput_ratio']}, p50 x{r['p50_ratio']}, "
            f"server CPU/request x{r['cpu_per_request_ratio']}"
        )
    print(
        "\nWhat stands between, at concurrency 1 (p50 ms; gateway core = the gateway's own latency_ms)"
    )
    for name, b in between.items():
        print(
            f"  {name:<18} predict {b['predict_p50_ms']}  healthz {b['healthz_p50_ms']}  "
            f"gateway core {b['gateway_core_p50_ms']}  server CPU {b['cpu_ms_per_request']} ms/request"
        )
    print("\nWhere Ray's CPU goes at concurrency 32 (CPU ms per request, by process)")
    for name in ("serve", "serve-fast", "serve-fast-shadow"):
        row = find(rows, name, 32)
        if row and row.get("server_cpu_ms_per_request_by_process"):
            parts = ", ".join(
                f"{k} {v}" for k, v in list(row["server_cpu_ms_per_request_by_process"].items())[:6]
            )
            print(f"  {name:<18} {parts}")
    for phase in phases:
        if phase.get("started"):
            print(
                f"  {phase['name']}: start {phase['startup_s']} s, idle Ray {phase['idle_cpu_cores']} cores"
                + (f", {phase['events_logged']} events logged" if "events_logged" in phase else "")
            )
        else:
            print(f"  {phase['name']}: did not start: {phase.get('error', '')[:300]}")
    print(
        f"\nload average at end: {context['machine_at_end']['load_average_1_5_15']}; "
        f"{context['wall_s']} s; written to {path}"
    )


if __name__ == "__main__":
    main()
