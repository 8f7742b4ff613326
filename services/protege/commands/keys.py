"""`protege keys create --name NAME --role ROLE [--role ROLE]`: a new API key in the
keys file (PROTEGE_API_KEYS_FILE, default <PROTEGE_HOME>/keys.json, mode 0600). The
file keeps the key's sha256; the key is printed once. A running gateway rereads the
file within a second.

Roles: predict, feedback (send verdicts as NAME), trusted (verdicts that may grade
models), admin (everything). The same keys can be given as PROTEGE_API_KEYS
('NAME:KEY=role,role;...') or written into the file by hand (see `protege.serving.auth`).
"""

from __future__ import annotations

import argparse
import sys

from protege.settings import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="make API keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key in the keys file, printed once")
    create.add_argument("--name", required=True, help="who the key is (a reviewer's name)")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["predict", "feedback", "trusted", "foundation", "admin"],
        help="repeat for several",
    )
    create.add_argument("--file", help="default: PROTEGE_API_KEYS_FILE or <home>/keys.json")
    create.add_argument("--rate-per-s", type=float, help="this key's request rate")
    create.add_argument("--feedback-per-hour", type=int, help="this key's verdict quota")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from protege.serving.keyfiles import KEYS_FILE, add_key

    settings = load_settings()
    path = Path(args.file) if args.file else settings.api_keys_file or settings.home / KEYS_FILE
    try:
        key = add_key(
            path,
            args.name,
            set(args.role),
            rate_per_s=args.rate_per_s,
            feedback_per_hour=args.feedback_per_hour,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{key}\n", flush=True)
    print(
        f"The key of {args.name!r} ({', '.join(sorted(args.role))}), shown only now; {path} keeps "
        "its sha256.\nUse it as: -H 'Authorization: Bearer <the key>'"
        + (
            ""
            if settings.api_keys_file or args.file
            else f"\n(the gateway reads this file when PROTEGE_API_KEYS_FILE={path}, and on "
            "`protege up` with no other keys configured)"
        ),
        file=sys.stderr,
    )
    return 0
