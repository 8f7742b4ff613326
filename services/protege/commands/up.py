"""`protege up`: the Serve app (gateway, specialists, foundation model), the event
log (the embedded broker unless PROTEGE_KAFKA_BOOTSTRAP is set) and the improver on
this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import time

from protege.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="serve the API on this machine until Ctrl-C")
    parser.add_argument("--port", type=int, help="HTTP port (default PROTEGE_HTTP_PORT or 8000)")
    parser.add_argument("--fast-ingress", action="store_true",
                        help="Ray Serve direct ingress (lower latency; experimental in Ray 2.60)")
    parser.set_defaults(handler=run)


def curl_examples(url: str, auth_disabled: bool) -> str:
    header = "" if auth_disabled else " -H 'Authorization: Bearer $PROTEGE_KEY'"
    return (
        f"  curl -s {url}/v1/tasks/youtube-spam/predict{header} -H 'Content-Type: application/json' \\\n"
        f"       -d '{{\"text\": \"Check out my channel, subscribe!\"}}'\n"
        f"  curl -s {url}/v1/tasks/banking77/predict{header} -H 'Content-Type: application/json' \\\n"
        f"       -d '{{\"text\": \"My card has not arrived yet\"}}'\n"
        f"  API reference: {url}/docs"
    )


def run(args: argparse.Namespace) -> int:
    from protege.stack import LocalStack, stop_on_sigterm

    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"http_port": args.port} if args.port else {}
    stack = LocalStack(Settings(**overrides), improver_args=[], fast_ingress=args.fast_ingress)
    try:
        stack.start()
        settings = stack.settings
        print(f"\nProtégé is up at {stack.url}\n\nTry:\n{curl_examples(stack.url, settings.auth_disabled)}\n\n"
              f"Events: Kafka at {settings.kafka_bootstrap} (topics {settings.kafka_topic_predictions}, "
              f"{settings.kafka_topic_feedback}, {settings.kafka_topic_models}).\n"
              f"Improver: log in {stack.improver_log}.\nCtrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        stack.stop()
    return 0
