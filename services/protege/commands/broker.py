"""`protege broker`: run the embedded Kafka-protocol broker (Tansu) until Ctrl-C.

Prints the bootstrap address to use as `PROTEGE_KAFKA_BOOTSTRAP`, after creating
the event topics. Memory storage: stopping it forgets every event.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from protege.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broker", help="run the embedded Kafka broker (Tansu) until Ctrl-C", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--storage", default="memory://tansu/", help="Tansu storage engine URL (default memory)"
    )
    parser.add_argument(
        "--no-topics", action="store_true", help="do not create the protege.* topics"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protege.events.broker import EmbeddedBroker
    from protege.events.topics import ensure_topics

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = EmbeddedBroker(port=args.port or None, host=args.host, storage=args.storage)
    with broker:
        if not args.no_topics:
            ensure_topics(Settings(kafka_bootstrap=broker.bootstrap))
        print(broker.bootstrap, flush=True)
        print(f"# export PROTEGE_KAFKA_BOOTSTRAP={broker.bootstrap}   (Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print(f"broker exited unexpectedly: {broker.log_tail()}", flush=True)
                return 1
    return 0
