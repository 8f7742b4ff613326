"""A whole demo run: a fresh deployment in a run folder (its own home, broker, Serve
app and improver), the replay with reviewers under a live display, then the summary
and the chart. Ctrl-C stops the replay and every process the run started, and still
writes what was seen so far."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from protege.demo import chart, progress, summary
from protege.demo.deployment import demo_settings, import_gold, owner_exam
from protege.demo.model_events import ModelEventReader
from protege.demo.options import DemoOptions
from protege.demo.record import RunRecord
from protege.demo.reviewers import ReviewerPool
from protege.demo.traffic import Replay, stream
from protege.stack import LocalStack, curl_examples, stop_on_sigterm

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    folder: Path
    record: RunRecord
    chart: Path | None
    summary: Path | None
    wall_s: float
    interrupted: bool


def run_folder(options: DemoOptions) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return (options.out or Path("runs") / f"demo-{options.task}-{stamp}").resolve()


def improver_args(options: DemoOptions) -> list[str]:
    """`protege improver run` arguments: the demo's task only, retrained early and often."""
    args = ["--task", options.task, "--retrain-every", str(options.retrain_every)]
    if options.retrain_minutes is not None:
        args += ["--retrain-minutes", str(options.retrain_minutes)]
    return args + list(options.extra_improver_args)


def quiet_logging(folder: Path) -> None:
    """Details to the run's log file; the terminal keeps the live display and warnings."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "logs" / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    for noisy in ("kafka", "httpx", "ray", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    console = console or Console()
    stop_on_sigterm()
    folder = run_folder(options)
    quiet_logging(folder)
    settings, headers = demo_settings(options, folder)
    client_headers = headers.pop("client")
    task = settings.load_tasks()[options.task]
    items = stream(options.task, options.split, options.seed)
    gold, items = items[: options.gold], items[options.gold :]
    evaluation, items = owner_exam(task, items, options.exam_gold)
    # The evaluation set is the morning's traffic, which the owner labeled: it is replayed
    # first, so the FM's answers on it are recorded (to compare with it, and to calibrate).
    gold, items = gold + evaluation, (evaluation + items)[: options.limit]
    reviewers = ReviewerPool(
        task.label_names, options.review_share, options.error_rate, seed=options.seed
    )
    record = RunRecord(options.task)
    console.print(
        f"[bold]Protégé demo[/]: {len(items)} {options.task} texts ({options.split} split, "
        f"seed {options.seed}) from {options.concurrency} clients; reviewers answer "
        f"{100 * options.review_share:.0f} % of the predictions from the review queue "
        f"({options.reviews_needed} an item), {100 * options.error_rate:.0f} % of them "
        f"wrongly; the improver retrains every {options.retrain_every} feedback events."
        f"\nrun folder: {folder}"
    )
    if gold:
        counts = import_gold(settings, options.task, gold, folder)
        console.print(
            f"[dim]the task owner's gold: {counts['imported']} labeled texts "
            f"({counts['exam']} held out as the gate's exam, {counts['calibration']} to "
            f"calibrate the cascade); the {len(evaluation)} of the evaluation set are "
            "replayed first, the others never[/]"
        )
    stack = LocalStack(
        settings,
        improver_args=improver_args(options),
        log_dir=folder / "logs",
        say=lambda line: console.print(f"[dim]{line}[/]"),
    )
    reader = None
    started = time.monotonic()
    interrupted = False
    stage = "starting"
    url = None
    try:
        stack.start()
        url = stack.url
        console.print(f"[dim]gateway at {stack.url}; replaying…[/]")
        console.print(
            "Try it while the demo runs:\n"
            + curl_examples(stack.url, stack.settings.auth_disabled),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        record.started_at = time.time()
        reader = ModelEventReader(stack.settings, options.task, record).start()
        replay = Replay(
            stack.url,
            options.task,
            items,
            reviewers,
            record,
            concurrency=options.concurrency,
            headers=client_headers,
            reviewer_headers=headers,
            deadline_s=60 * options.max_minutes,
            reviews_needed=task.review.reviews_needed,
            review_every_s=options.review_every_s,
        )
        stage = "replaying"

        def now() -> dict:
            code = stack.improver_exit_code()
            note = "" if code is None else f" (the improver exited with {code}: see its log)"
            return {
                "elapsed": time.time() - record.started_at,
                "planned": len(items),
                "stage": stage + note,
            }

        with progress.LiveProgress(
            lambda: progress.render(record, **now()),
            lambda: progress.status_line(record, **now()),
            console=console,
        ):
            asyncio.run(replay.run())
        stage = "done" if not replay.stopped_early else "stopped at the time limit"
    except KeyboardInterrupt:
        interrupted = True
        console.print("\n[yellow]interrupted: stopping everything this run started…[/]")
    finally:
        if reader is not None:
            reader.stop()
        stack.stop()
    wall_s = time.monotonic() - started
    chart_path = summary_path = None
    if record.outcomes:
        chart_path = chart.write_chart(record, folder / "chart.png", window=options.window)
        summary_path = summary.write(
            record,
            folder,
            wall_s,
            extra={
                "options": {k: str(v) for k, v in options.__dict__.items()},
                "interrupted": interrupted,
                "url": url,
                "processes": stack.pids,
                "gold_imported": len(gold),
                "exam_gold": len(evaluation),
            },
        )
        console.print(summary.render(record, wall_s))
    console.print(
        f"\nrun folder: [bold]{folder}[/]"
        + (f"\nchart: {chart_path}" if chart_path else "")
        + f"\nlogs: {folder / 'logs'}"
    )
    return DemoResult(folder, record, chart_path, summary_path, wall_s, interrupted)
