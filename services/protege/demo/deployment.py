"""The run's own deployment, so that every demo starts from day 0: a home in the run
folder (empty store and registry), a copy of the tasks file with the demo's round
budgets, the task owner's gold labels (and evaluation set) in its store, and, when auth
is on, an API key that only this run knows."""

from __future__ import annotations

import csv
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path

import yaml

from protege.demo.options import DemoOptions
from protege.demo.reviewers import DEFAULT_NAMES
from protege.improver.data.gold import TRAIN, task_split
from protege.settings import Settings, secret_value
from protege.taskspec import TaskSpec, load_tasks


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def demo_settings(
    options: DemoOptions, folder: Path, reviewers: Sequence[str] = DEFAULT_NAMES
) -> tuple[Settings, dict[str, dict[str, str]]]:
    """The run's settings and each client's headers: `"client"` predicts, and every
    reviewer sends verdicts with a key of their own (the reviewer is the key)."""
    from protege.events.broker import free_port

    base = Settings()
    port = options.port or base.http_port
    if options.port is None and not port_is_free(base.http_host, port):
        port = free_port(base.http_host)
    # Built anew, not model_copy'd: the store, registry and spool paths derive from home.
    overrides: dict = {
        "home": folder / "home",
        "http_port": port,
        "tasks_file": write_tasks_file(base.tasks_file, options, folder),
    }
    headers: dict[str, dict[str, str]] = {"client": {}, **{name: {} for name in reviewers}}
    if not base.auth_disabled:
        keys = {who: f"demo-{secrets.token_urlsafe(16)}" for who in headers}
        entries = [f"demo-client:{keys['client']}=predict"]
        entries += [f"{name}:{keys[name]}=feedback" for name in reviewers]
        overrides["api_keys"] = ";".join(filter(None, [secret_value(base.api_keys), *entries]))
        # The replay is the demo's own traffic, as fast as the app answers.
        overrides.update(rate_per_s=0, feedback_per_hour=0)
        headers = {who: {"Authorization": f"Bearer {key}"} for who, key in keys.items()}
    return Settings(**overrides), headers


def write_tasks_file(source: Path, options: DemoOptions, folder: Path) -> Path:
    """A copy of `source` in `folder` whose demo task has the demo's round budgets (the
    deployment's own file is left as it is)."""
    raw = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    found = [t for t in raw.get("tasks", []) if t.get("name") == options.task]
    if not found:
        raise SystemExit(f"unknown task {options.task!r} in {source}")
    retrain = found[0].setdefault("retrain", {})
    retrain["prompt_lf_budget"] = options.prompt_lf_budget
    retrain["fm_eval_max"] = options.fm_eval_max
    found[0].setdefault("review", {})["reviews_needed"] = options.reviews_needed
    path = folder / "tasks.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {source} with the demo's round budgets for {options.task}.\n"
        + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    load_tasks(path)  # a bad value fails here, not in the app or the improver
    return path


def owner_exam(
    task: TaskSpec, items: Sequence[tuple[str, str]], n: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the owner's evaluation set, the rest): the first `n` of `items` whose text falls
    in the exam or calibration bucket, and every other item in order."""
    chosen: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for text, label in items:
        if len(chosen) < n and task_split(task, text) != TRAIN:
            chosen.append((text, label))
        else:
            rest.append((text, label))
    return chosen, rest


def import_gold(
    settings: Settings, task: str, pairs: Sequence[tuple[str, str]], folder: Path
) -> dict:
    """Write `pairs` as the owner's gold file and import it into the run's store, as
    `protege gold import` does; returns the counts per split."""
    from protege.improver.data.gold import import_gold_file
    from protege.improver.data.store import ExampleStore

    path = folder / "gold.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(pairs)
    settings.home.mkdir(parents=True, exist_ok=True)
    store = ExampleStore(settings.store_url)
    try:
        return import_gold_file(store, settings.load_tasks()[task], path)
    finally:
        store.close()
