"""`protege improver run`: the background improver's intake (events into the store).

Training, gating and promotion are `protege.improver`'s other parts; this runs the
consumer loop until interrupted (or, with --idle-exit, until the topics go quiet).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "improver", help="Run the improver (consume events into the store)."
    )
    sub = parser.add_subparsers(dest="improver_command", required=True)
    run = sub.add_parser(
        "run", help="Consume prediction and feedback events into the example store."
    )
    run.add_argument("--store", help="SQLAlchemy URL (default: settings' store_url).")
    run.add_argument("--group", default=None, help="Consumer group (default protege-improver).")
    run.add_argument(
        "--batch-size", type=int, default=500, help="Most events per store transaction."
    )
    run.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="S",
        help="Exit after S seconds without events (one-shot backfills, tests).",
    )
    run.set_defaults(handler=handle_run)


def handle_run(args: argparse.Namespace) -> int:
    from protege.config import Settings
    from protege.improver.ingest import DEFAULT_GROUP_ID, Ingestor
    from protege.improver.store import ExampleStore

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    store = ExampleStore(args.store or settings.store_url)
    ingestor = Ingestor(
        store, settings, group_id=args.group or DEFAULT_GROUP_ID, max_records=args.batch_size
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
