"""`protege up`: the Serve app (gateway, specialists, foundation model), the event
log (the embedded broker unless PROTEGE_KAFKA_BOOTSTRAP is set) and the improver on
this machine, until Ctrl-C.

With no API keys configured (and auth on), the first start makes an admin key in
`<PROTEGE_HOME>/keys.json` (its sha256, mode 0600) and prints it once, in curl
commands that work as printed."""

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


def keys_note(settings, new_key: str | None) -> str:
    """What a person needs to know about keys on this start."""
    if settings.auth_disabled:
        return "Auth is DISABLED (PROTEGE_AUTH_DISABLED=true): local use only.\n"
    fewer = (
        "Keys with fewer rights: protege keys create --name NAME --role predict\n"
        "  (roles: predict, feedback, trusted, foundation, admin; or PROTEGE_API_KEYS='NAME:KEY=predict',\n"
        f"  or entries in {settings.api_keys_file or 'PROTEGE_API_KEYS_FILE'}; see `protege keys -h`).\n"
    )
    if new_key:
        return (
            f"No API keys were configured: this first start made an admin key, shown ONCE\n"
            f"(only its sha256 is kept, in {settings.api_keys_file}):\n\n"
            f"  {new_key}\n\n{fewer}"
        )
    return f"Set PROTEGE_KEY to a key with the predict role for the commands below.\n{fewer}"


def run(args: argparse.Namespace) -> int:
    from protege.serving.keyfiles import first_admin_key
    from protege.stack import LocalStack, curl_examples, stop_on_sigterm

    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"http_port": args.port} if args.port else {}
    settings, new_key = first_admin_key(load_settings(**overrides))
    stack = LocalStack(settings, improver_args=[], fast_ingress=args.fast_ingress)
    try:
        stack.start()
        settings = stack.settings
        print(
            f"\nProtégé is up at {stack.url}\n\n{keys_note(settings, new_key)}\n"
            f"Try:\n{curl_examples(stack.url, settings.auth_disabled, new_key)}\n\n"
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
