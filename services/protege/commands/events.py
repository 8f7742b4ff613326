"""`protege events drain --spool-dir DIR --timeout-s N`: wait, before a pod stops, until no
producer slot under DIR holds an unsent event (`protege.events.drain`). Live producers send
their own; slots whose process is gone are replayed here when PROTEGE_KAFKA_* settings are
in the environment, else left on disk. Exits 0 when drained or after N seconds, and never
non-zero because Kafka is away (a preStop hook that fails only logs an event on the pod).
Prints a JSON report: drained, seconds, replayed, the unsent events left per slot.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "events", help="The event log: drain a spool before a pod stops.", description=__doc__
    )
    sub = parser.add_subparsers(dest="events_command", required=True)
    drain = sub.add_parser(
        "drain",
        help="Wait until the spool's producer slots hold no unsent event (a preStop hook).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drain.add_argument(
        "--spool-dir", type=Path, default=None, help="Default: PROTEGE_EVENTS_SPOOL_DIR."
    )
    drain.add_argument(
        "--timeout-s", type=float, default=60.0, help="Give up after this long (default 60)."
    )
    drain.set_defaults(handler=handle_drain)


def handle_drain(args: argparse.Namespace) -> int:
    from protege.events.drain import drain
    from protege.settings import SettingsError, load_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except SettingsError as exc:  # still wait for the live producers; replay nothing
        log.warning("settings unusable, dead slots are not replayed:\n%s", exc)
        settings = None
    spool_dir = args.spool_dir or (settings.events_spool_dir if settings else None)
    if spool_dir is None:
        raise SystemExit("error: no --spool-dir and no usable PROTEGE_EVENTS_SPOOL_DIR")
    report = drain(spool_dir, args.timeout_s, settings)
    print(json.dumps(report.to_dict()), flush=True)
    return 0
