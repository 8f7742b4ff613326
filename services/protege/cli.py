"""The `protege` command. Each subcommand lives in `protege.commands.<name>` and
registers itself through `register(subparsers)`; this module only dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

# One module per subcommand group; add a name here to add a command.
COMMAND_MODULES = [
    "up",
    "demo",
    "fm_server",
    "broker",
    "models",
    "lf",
    "errors",
    "gold",
    "improver",
    "tasks",
    "events",
    "keys",
    "jobs",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protege", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"protege.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from protege.settings import SettingsError
    from protege.taskspec import TasksFileError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, TasksFileError) as exc:
        # A configuration mistake is the user's to fix: say what and where, no traceback.
        print("\n".join(f"error: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
