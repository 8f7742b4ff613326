"""`protege improver [run]`: the background improver (`protege.improver.service`):
events into the store, and a training round whenever a task's trigger fires (every N
new feedback events, every T minutes, or a RetrainRequest from the admin API),
until interrupted. `--ingest-only` runs the intake alone (or, with --idle-exit,
until the topics go quiet). `protege improver round TASK` runs one round now.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "improver",
        help="Run the improver (events into the store, retrain, gate, promote).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # `protege improver` alone is `protege improver run` (the Helm chart's command).
    parser.set_defaults(
        handler=handle_run,
        store=None,
        group=None,
        batch_size=500,
        idle_exit=None,
        task=None,
        retrain_every=None,
        retrain_minutes=None,
        ingest_only=False,
    )
    sub = parser.add_subparsers(dest="improver_command", required=False)
    run = sub.add_parser(
        "run", help="Ingest events and retrain on the triggers (the default command)."
    )
    run.add_argument("--store", help="SQLAlchemy URL (default: settings' store_url).")
    run.add_argument(
        "--group", default=None, help="Consumer group (default: PROTEGE_IMPROVER_GROUP)."
    )
    run.add_argument(
        "--batch-size", type=int, default=500, help="Most events per store transaction."
    )
    run.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="S",
        help="With --ingest-only: exit after S seconds without events (backfills, tests).",
    )
    run.add_argument(
        "--ingest-only",
        action="store_true",
        help="Consume events into the store only; never train.",
    )
    run.add_argument(
        "--task",
        action="append",
        default=None,
        help="Train only this task (repeatable; default: every configured task).",
    )
    run.add_argument(
        "--retrain-every",
        type=int,
        default=None,
        metavar="N",
        help="Override each task's retrain.every_feedback: N new feedback events.",
    )
    run.add_argument(
        "--retrain-minutes",
        type=float,
        default=None,
        metavar="T",
        help="Override each task's retrain.every_minutes.",
    )
    run.set_defaults(handler=handle_run)
    one = sub.add_parser("round", help="Run one training round for TASK now and print it.")
    one.add_argument("task")
    one.add_argument("--store", help="SQLAlchemy URL (default: settings' store_url).")
    one.add_argument("--no-publish", action="store_true", help="Send no ModelEvent.")
    one.set_defaults(handler=handle_round)


def _group(args: argparse.Namespace, settings) -> str:
    return args.group or settings.improver_group


def handle_run(args: argparse.Namespace) -> int:
    from protege.improver.data.ingest import Ingestor
    from protege.improver.data.store import ExampleStore
    from protege.settings import Settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    store = ExampleStore(args.store or settings.store_url)
    if not args.ingest_only:
        return _serve(args, settings, store)
    ingestor = Ingestor(
        store, settings, group_id=_group(args, settings), max_records=args.batch_size
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"started": True, "store": store.url.split("@")[-1]}), flush=True)
    try:
        stats = ingestor.run(stop=stop, idle_exit_s=args.idle_exit)
    finally:
        ingestor.close()
        store.close()
    print(json.dumps(stats), flush=True)
    return 0


def _tasks(args: argparse.Namespace, settings) -> dict:
    tasks = settings.load_tasks()
    unknown = sorted(set(args.task or ()) - set(tasks))
    if unknown:
        raise SystemExit(f"error: unknown task(s) {unknown}; known: {sorted(tasks)}")
    chosen = {n: t for n, t in tasks.items() if not args.task or n in args.task}
    update = {}
    if args.retrain_every is not None:
        update["every_feedback"] = args.retrain_every
    if args.retrain_minutes is not None:
        update["every_minutes"] = args.retrain_minutes
    if update:
        chosen = {
            n: t.model_copy(update={"retrain": t.retrain.model_copy(update=update)})
            for n, t in chosen.items()
        }
    return chosen


def _serve(args: argparse.Namespace, settings, store) -> int:
    """The whole loop: intake, retrain requests, rounds on their triggers."""
    from protege.improver.service import ImproverService

    service = ImproverService(
        settings, _tasks(args, settings), store=store, group_id=_group(args, settings)
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.request_stop())
    print(
        json.dumps(
            {"started": True, "tasks": sorted(service.tasks), "store": store.url.split("@")[-1]}
        ),
        flush=True,
    )
    try:
        service.start().wait()
    finally:
        service.stop()
        store.close()
    print(
        json.dumps(
            {"rounds": [r.to_dict() | {"metrics": None} for r in service.results]}, default=str
        ),
        flush=True,
    )
    return 0


def handle_round(args: argparse.Namespace) -> int:
    """One round now, in this process; exit 0 whether promoted or rejected, 1 otherwise."""
    from protege.improver.data.store import ExampleStore
    from protege.improver.loop import TrainingInProgress, run_round
    from protege.registry import Registry
    from protege.settings import Settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    tasks = settings.load_tasks()
    if args.task not in tasks:
        print(f"error: unknown task {args.task!r}; known: {sorted(tasks)}", file=sys.stderr)
        return 2
    store = ExampleStore(args.store or settings.store_url)
    publish = None
    producer = None
    if settings.kafka_bootstrap and not args.no_publish:
        from protege.events.producer import EventProducer

        producer = EventProducer(settings).start()
        publish = producer.publish
    try:
        report = run_round(
            tasks[args.task],
            store,
            Registry.from_settings(settings),
            settings,
            trigger="cli",
            publish=publish,
            progress=True,
        )
    except TrainingInProgress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if producer is not None:
            producer.close(timeout=10)
        store.close()
    if report.judgement is not None:
        print(report.judgement.table())
    print(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.outcome in ("promoted", "rejected") else 1
