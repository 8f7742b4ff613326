"""`protege up`: the Serve app (gateway, specialists, foundation model), the event
log (the embedded broker unless PROTEGE_KAFKA_BOOTSTRAP is set) and the improver on
this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import time

from protege.settings import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="serve the API on this machine until Ctrl-C")
    parser.add_argument("--port", type=int, help="HTTP port (default PROTEGE_HTTP_PORT or 8000)")
    parser.add_argument(
        "--fast-ingress",
        action="store_true",
        help="Ray Serve direct ingress (lower latency; experimental in Ray 2.60)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protege.stack import LocalStack, curl_examples, stop_on_sigterm

    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"http_port": args.port} if args.port else {}
    stack = LocalStack(load_settings(**overrides), improver_args=[], fast_ingress=args.fast_ingress)
    try:
        stack.start()
        settings = stack.settings
        print(
            f"\nProtégé is up at {stack.url}\n\nTry:\n{curl_examples(stack.url, settings.auth_disabled)}\n\n"
            f"Events: Kafka at {settings.kafka_bootstrap} (topics {settings.kafka_topic_predictions}, "
            f"{settings.kafka_topic_feedback}, {settings.kafka_topic_models}).\n"
            f"Improver: log in {stack.improver_log}.\nCtrl-C stops it.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        stack.stop()
    return 0
