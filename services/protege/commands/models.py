"""`protege models list|promote|rollback TASK [VERSION]`: the task's specialists in the
model registry (MLflow), and the `champion` alias that serving follows.

Promotion here is an operator's decision and skips the gate. Promote and rollback
publish a ModelEvent to `protege.models` when PROTEGE_KAFKA_BOOTSTRAP is set;
replicas also poll the alias, so the change lands either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from protege.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, promote or roll back a task's specialists",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every version, newest first, with its aliases")
    listing.add_argument("task")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for name, help_text, version_help in (
        (
            "promote",
            "make VERSION (default: the challenger) the champion",
            "default: the version with alias 'challenger'",
        ),
        (
            "rollback",
            "make VERSION (default: the previous champion) the champion",
            "default: the champion before the current one",
        ),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("task")
        action.add_argument("version", nargs="?", help=version_help)
        action.add_argument("--reason", help="recorded with the ModelEvent")
        action.add_argument(
            "--no-publish", action="store_true", help="move the alias only; send no ModelEvent"
        )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from protege.registry import Registry, RegistryError

    settings = settings or Settings()
    registry = Registry.from_settings(settings)
    try:
        if args.action == "list":
            return _list(registry, args)
        reasons = [args.reason] if args.reason else [f"{args.action} by an operator (CLI)"]
        publish = None if args.no_publish else _publisher(settings)
        move = registry.promote if args.action == "promote" else registry.rollback
        event = move(args.task, args.version, reasons=reasons, publish=publish)
        print(
            f"{args.task}: champion is now version {event.model.version} "
            f"({event.model.model}); event {event.event_id}"
        )
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _list(registry, args: argparse.Namespace) -> int:
    versions = registry.list(args.task)
    if args.json:
        print(json.dumps([v.__dict__ for v in versions], indent=2, default=str))
        return 0
    if not versions:
        print(f"{args.task}: no registered models")
        return 0
    print(f"{'version':>7}  {'model':<18} {'aliases':<20} {'status':<16} {'accuracy':>8}  created")
    for v in versions:
        accuracy = v.metrics.get("accuracy")
        created = dt.datetime.fromtimestamp(v.created).strftime("%Y-%m-%d %H:%M")
        print(
            f"{v.version:>7}  {v.model:<18} {','.join(v.aliases) or '-':<20} {v.status:<16} "
            f"{'-' if accuracy is None else f'{accuracy:.4f}':>8}  {created}"
        )
    return 0


def _publisher(settings: Settings):
    """Publish to Kafka when a broker is configured; the CLI waits for the ack (or spool)."""
    if not settings.kafka_bootstrap:
        print(
            "note: PROTEGE_KAFKA_BOOTSTRAP is unset: no ModelEvent sent; "
            "replicas pick the change up by polling the alias",
            file=sys.stderr,
        )
        return None

    def publish(event) -> None:
        from protege.events.producer import EventProducer

        producer = EventProducer(settings).start()
        try:
            producer.publish(event)
        finally:
            producer.close(timeout=10)

    return publish
