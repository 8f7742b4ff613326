"""Soak and faults (issue 15), on this machine and its loopback only: `--minutes` of
predictions at a fixed rate (`--rate` a second, single texts) with verdicts on a share
of them and a trickle of bad inputs, through the real stack (embedded broker, Ray Serve
app, improver), while these faults are injected:

- the broker is killed (SIGKILL) and restarted;
- the improver is killed (SIGKILL) in the middle of a training round and restarted;
- a bad specialist (trained on shuffled labels) is promoted through the admin API,
  then rolled back.

It reports and checks: failed requests (any good request not answered 200; degraded
answers are counted apart) = 0; every prediction and verdict stored exactly once by the
improver; each long-lived process's RSS between minute 2 and the end (±10 %); the
training lease of the killed round taken over and a round finished after it.

The embedded broker keeps its topics in memory: a killed one forgets events it had
acknowledged and no consumer had read yet (a durable Kafka would not). So the kill comes
right after the improver has caught up (one second at most, measured and reported);
what the gateways publish during the outage goes to their spools and must arrive.

    .venv/bin/python bench/soak.py [--minutes 5] [--rate 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results, youtube_specialist  # noqa: E402

TASK = "youtube-spam"
REVIEW_SHARE = 0.3
LEASE_S = 20.0  # the killed round's lease expires this long after it started
RSS_TOLERANCE = 0.10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Traffic:
    """Sends single-text predictions at a fixed rate, a verdict on a share of them, and
    a bad request now and then; remembers what each answer said."""

    def __init__(self, url: str, keys: dict[str, str], texts: list[str], rate: float):
        self.url, self.keys, self.texts, self.rate = url, keys, texts, rate
        self.prediction_ids: list[str] = []
        self.feedback_ids: list[str] = []
        self.failures: list[str] = []
        self.degraded = 0
        self.requests = 0
        self.bad_inputs: dict[str, int] = {}
        self.bad_answered_4xx = 0
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        rng = random.Random(15)
        predict = {"Authorization": f"Bearer {self.keys['client']}"}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            next_at = time.monotonic()
            n = 0
            while not self._stop.is_set():
                next_at += 1.0 / self.rate
                self._predict(client, predict, self.texts[n % len(self.texts)], rng)
                if n % 25 == 0:
                    self._bad_input(client, rng, n // 25)
                n += 1
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _predict(self, client, headers, text: str, rng: random.Random) -> None:
        started = time.perf_counter()
        self.requests += 1
        try:
            response = client.post(
                f"/v1/tasks/{TASK}/predict", json={"text": text}, headers=headers
            )
        except httpx.HTTPError as exc:
            self.failures.append(f"predict: {exc!r}")
            return
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            self.failures.append(f"predict {response.status_code}: {response.text[:200]}")
            return
        (item,) = response.json()["predictions"]
        self.degraded += item.get("degraded", False)
        self.prediction_ids.append(item["prediction_id"])
        if rng.random() < REVIEW_SHARE:
            reviewer = rng.choice(["ana", "ben"])
            verdict = client.post(
                "/v1/feedback",
                json={
                    "prediction_id": item["prediction_id"],
                    "verdict": rng.choice(["up", "down"]),
                },
                headers={"Authorization": f"Bearer {self.keys[reviewer]}"},
            )
            self.requests += 1
            if verdict.status_code != 200:
                self.failures.append(f"feedback {verdict.status_code}: {verdict.text[:200]}")
            else:
                self.feedback_ids.append(verdict.json()["event_id"])

    def _bad_input(self, client, rng: random.Random, i: int) -> None:
        """One of the inputs an attacker or a broken client sends; each must be a 4xx."""
        auth = {"Authorization": f"Bearer {self.keys['client']}"}
        path = f"/v1/tasks/{TASK}/predict"
        kinds = {
            "oversized body": lambda: client.post(
                path, content=b'{"text": "' + b"x" * 2_000_000 + b'"}', headers=auth
            ),
            "malformed JSON": lambda: client.post(path, content=b'{"text": ', headers=auth),
            "not UTF-8": lambda: client.post(path, content=b'{"text": "\xff\xfe"}', headers=auth),
            "unknown task": lambda: client.post(
                "/v1/tasks/nope/predict", json={"text": "a"}, headers=auth
            ),
            "no key": lambda: client.post(path, json={"text": "a"}),
            "wrong key": lambda: client.post(
                path, json={"text": "a"}, headers={"Authorization": "Bearer guess"}
            ),
            "forged prediction id": lambda: client.post(
                "/v1/feedback",
                json={"prediction_id": f"{TASK}.{secrets.token_hex(12)}.AAAA", "verdict": "up"},
                headers={"Authorization": f"Bearer {self.keys['ana']}"},
            ),
            "predict key on admin": lambda: client.post(
                f"/v1/admin/tasks/{TASK}/promote", json={}, headers=auth
            ),
            "batch over the limit": lambda: client.post(
                path, json={"texts": ["a"] * 2000}, headers=auth
            ),
        }
        name = list(kinds)[i % len(kinds)]
        self.bad_inputs[name] = self.bad_inputs.get(name, 0) + 1
        try:
            status = kinds[name]().status_code
        except httpx.HTTPError as exc:
            self.failures.append(f"bad input {name}: {exc!r}")
            return
        if 400 <= status < 500:
            self.bad_answered_4xx += 1
        else:
            self.failures.append(f"bad input {name}: {status}")


def rss_of(pids: dict[str, int]) -> dict[str, float]:
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            out[name] = float("nan")
    return out


def serve_pids() -> dict[str, int]:
    """The Serve replicas and the proxy, by their process titles."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
        for actor in (
            "ServeReplica:protege:Gateway",
            "ServeReplica:protege:FoundationModel",
            "ProxyActor",
        ):
            if actor in title and actor not in found:
                found[actor.split(":")[-1]] = proc.pid
    return found


def bad_specialist(folder: Path) -> Path:
    """The project's TF-IDF family trained on shuffled youtube labels."""
    import numpy as np

    from protege import datasets
    from protege.improver.training import tfidf
    from protege.improver.training.dataset import TrainingSet
    from protege.taskspec import TrainingSpec

    train = datasets.load(TASK, "train")
    labels = list(np.random.default_rng(0).permutation(list(train.labels)))
    data = TrainingSet.build(train.label_names, gold_texts=train.texts, gold_labels=labels)
    files = tfidf.train(data, TrainingSpec(families=["tfidf"]), progress=False)
    return files.write(folder, task=TASK, labels=train.label_names, version="bad")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=6.0, help="predictions a second")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from protege import datasets
    from protege.demo.deployment import import_gold, write_tasks_file
    from protege.demo.options import DemoOptions
    from protege.events.broker import EmbeddedBroker, free_port
    from protege.improver.data.ledger import RoundLedger
    from protege.improver.data.store import ExampleStore
    from protege.registry import Registry
    from protege.serving.launch import start_serve, stop_serve
    from protege.settings import Settings
    from protege.stack import improver_command, settings_env

    run = Path(tempfile.mkdtemp(prefix="protege-soak-"))
    keys = {who: f"soak-{secrets.token_urlsafe(12)}" for who in ("client", "ana", "ben", "ops")}
    train = datasets.load(TASK, "train")
    gold_n = 180
    texts = list(train.texts[gold_n:])
    broker = EmbeddedBroker(port=free_port(), log_path=run / "broker.log").start()
    settings = Settings(
        home=run / "home",
        http_port=free_port(),
        tasks_file=write_tasks_file(Settings().tasks_file, DemoOptions(task=TASK), run),
        api_keys=(
            f"soak-client:{keys['client']}=predict;ana:{keys['ana']}=feedback;"
            f"ben:{keys['ben']}=feedback;ops:{keys['ops']}=admin"
        ),
        signing_secret=secrets.token_urlsafe(24),
        kafka_bootstrap=broker.bootstrap,
        kafka_session_timeout_ms=3000,
        kafka_ack_timeout_s=2.0,
        kafka_reconnect_max_s=1.0,
        improver_lease_s=LEASE_S,
        improver_check_s=2.0,
        fm_deadline_s=3.0,
        model_poll_s=5.0,
    )
    import_gold(
        settings,
        TASK,
        list(zip(train.texts[:gold_n], [str(y) for y in train.labels[:gold_n]])),
        run,
    )
    # A champion from the start, as in production after the first rounds: the CPU FM
    # alone cannot answer every text at this rate (it would be shed, 503 by design).
    registry = Registry.from_settings(settings)
    registry.promote(TASK, registry.log_candidate(TASK, youtube_specialist(run / "good", "good")))
    improver_log = open(run / "improver.log", "ab")  # noqa: SIM115 - the children keep it

    def start_improver() -> subprocess.Popen:
        return subprocess.Popen(
            improver_command(["--task", TASK, "--retrain-every", "40"]),
            env={**os.environ, **settings_env(settings)},
            stdout=improver_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    import sqlalchemy as sa

    from protege.improver.data.store import events, predictions

    def stored_ids() -> tuple[set[str], set[str]]:
        with store.engine.connect() as conn:
            preds = set(conn.execute(sa.select(predictions.c.prediction_id)).scalars())
            evs = set(conn.execute(sa.select(events.c.event_id)).scalars())
        return preds, evs

    faults: list[dict] = []
    started_at = time.monotonic()
    log(f"run folder {run}; starting the Serve app")
    url = start_serve(settings)
    improver = start_improver()
    store = ExampleStore(settings.store_url)
    ledger = RoundLedger.of(store)
    traffic = Traffic(url, keys, texts, args.rate).start()
    load_start = time.monotonic()
    duration = args.minutes * 60
    rss: list[tuple[float, dict[str, float]]] = []
    admin = httpx.Client(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {keys['ops']}"}
    )

    def at(fraction: float) -> float:
        return load_start + fraction * duration

    def sample_rss() -> None:
        pids = {**serve_pids(), "broker": broker.pid, "improver": improver.pid}
        rss.append((time.monotonic() - load_start, rss_of({k: v for k, v in pids.items() if v})))

    plan = [(0.2, "broker"), (0.4, "improver"), (0.65, "bad model")]
    try:
        while time.monotonic() < load_start + duration:
            if plan and time.monotonic() >= at(plan[0][0]):
                _, fault = plan.pop(0)
                if fault == "broker":
                    # Until the improver holds every event answered so far (5 s at most).
                    sent = set(traffic.prediction_ids[:-1]) | set(traffic.feedback_ids[:-1])
                    wait_from = time.monotonic()
                    while time.monotonic() - wait_from < 5.0 and sent - set().union(*stored_ids()):
                        time.sleep(0.1)
                    caught_up_s = round(time.monotonic() - wait_from, 2)
                    broker.kill()
                    log("broker killed")
                    time.sleep(15)
                    broker.start()
                    faults.append(
                        {"fault": "broker killed, restarted after 15 s", "caught_up_s": caught_up_s}
                    )
                    log("broker restarted")
                elif fault == "improver":
                    deadline = time.monotonic() + 90
                    while time.monotonic() < deadline and not ledger.state(TASK).running(
                        time.time()
                    ):
                        time.sleep(0.2)
                    state = ledger.state(TASK)
                    mid_round = state.running(time.time())
                    improver.send_signal(signal.SIGKILL)
                    improver.wait()
                    killed_at = time.time()
                    improver = start_improver()
                    # The killed round's lease blocks the task until it expires; this
                    # request is served only once the new improver has taken it over.
                    admin.post(f"/v1/admin/tasks/{TASK}/retrain")
                    faults.append(
                        {
                            "fault": "improver killed (SIGKILL) and restarted",
                            "mid_round": mid_round,
                            "round_started": state.started_at,
                            "killed_at": killed_at,
                        }
                    )
                    log(
                        f"improver killed ({'mid-round' if mid_round else 'no round running'}) and restarted"
                    )
                else:
                    registry = Registry.from_settings(settings)
                    good = registry.alias_version(TASK, "champion")
                    bad = registry.log_candidate(
                        TASK, bad_specialist(run / "bad"), set_challenger=False
                    )
                    promoted = admin.post(
                        f"/v1/admin/tasks/{TASK}/promote",
                        json={"version": bad, "reason": "soak: a bad model"},
                    )
                    time.sleep(20)
                    rolled = admin.post(
                        f"/v1/admin/tasks/{TASK}/rollback", json={"reason": "soak: roll it back"}
                    )
                    faults.append(
                        {
                            "fault": "bad model promoted, rolled back after 20 s",
                            "bad_version": bad,
                            "champion_before": good,
                            "promote_status": promoted.status_code,
                            "rollback_status": rolled.status_code,
                            "champion_after": registry.alias_version(TASK, "champion"),
                        }
                    )
                    log(
                        f"bad model {bad} promoted ({promoted.status_code}), "
                        f"rolled back ({rolled.status_code})"
                    )
            sample_rss()
            time.sleep(5)
    finally:
        traffic.stop()
    log("load stopped; waiting for the improver to store every event")
    deadline = time.monotonic() + 180

    while time.monotonic() < deadline:
        preds, evs = stored_ids()
        missing_predictions = set(traffic.prediction_ids) - preds
        missing_feedback = set(traffic.feedback_ids) - evs
        if not missing_predictions and not missing_feedback:
            break
        time.sleep(2)
    with store.engine.connect() as conn:
        duplicate_predictions = conn.execute(
            sa.select(sa.func.count()).select_from(predictions)
        ).scalar_one() - len(preds)
    kill = next(f for f in faults if f["fault"].startswith("improver"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = ledger.state(TASK)
        lease_recovered = bool(state.finished_at and state.finished_at > kill["killed_at"])
        if lease_recovered:
            break
        time.sleep(2)
    # RSS: from minute 2 (the models are loaded, the first round done) to the end.
    steady = [(t, r) for t, r in rss if t >= 120]
    rss_report = {}
    for name in sorted({k for _, r in steady for k in r}):
        series = [r[name] for _, r in steady if name in r and r[name] == r[name]]
        if len(series) >= 2:
            first, last = series[0], series[-1]
            rss_report[name] = {
                "minute_2_mib": round(first, 1),
                "end_mib": round(last, 1),
                "change": round(last / first - 1, 3),
                "max_mib": round(max(series), 1),
            }
    admin.close()
    improver.send_signal(signal.SIGINT)
    try:
        improver.wait(20)
    except subprocess.TimeoutExpired:
        improver.kill()
    stop_serve()
    broker.stop()
    checked = ("Gateway", "FoundationModel", "ProxyActor")
    result = {
        "machine": machine(),
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "requests": traffic.requests,
        "predictions": len(traffic.prediction_ids),
        "verdicts": len(traffic.feedback_ids),
        "failed_requests": len(traffic.failures),
        "failures": traffic.failures[:20],
        "degraded_answers": traffic.degraded,
        "bad_inputs": traffic.bad_inputs,
        "bad_inputs_answered_4xx": traffic.bad_answered_4xx,
        "latency_ms_p50_p99": [
            round(sorted(traffic.latencies_ms)[len(traffic.latencies_ms) // 2], 1),
            round(sorted(traffic.latencies_ms)[int(len(traffic.latencies_ms) * 0.99)], 1),
        ],
        "faults": faults,
        "events_missing": len(missing_predictions) + len(missing_feedback),
        "duplicate_predictions_stored": duplicate_predictions,
        "lease_recovered": lease_recovered,
        "last_round": {
            "outcome": state.outcome,
            "trigger": state.trigger,
            "detail": (state.detail or "")[:300],
        },
        "rss": rss_report,
        "seconds": round(time.monotonic() - started_at, 1),
    }
    result["passed"] = {
        "no_failed_requests": result["failed_requests"] == 0,
        "no_events_lost": result["events_missing"] == 0 and duplicate_predictions == 0,
        "lease_recovered": lease_recovered,
        "killed_mid_round": kill["mid_round"],
        "rss_flat": all(
            abs(rss_report[n]["change"]) <= RSS_TOLERANCE for n in checked if n in rss_report
        ),
    }
    path = write_results("soak", result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("passed", "failed_requests", "events_missing", "rss", "faults")
            },
            indent=2,
        )
    )
    log(f"results in {path}")
    return 0 if all(result["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
