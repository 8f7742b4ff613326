"""`protege gold import TASK FILE`: add trusted labels (CSV `text,label` or JSONL);
`protege gold stats TASK`: how much gold there is, by split and source."""

from __future__ import annotations

import argparse
import json

from protege.commands.task_options import add_task_arguments, open_task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gold", help="Gold data: import and inspect.")
    sub = parser.add_subparsers(dest="gold_command", required=True)
    imp = sub.add_parser("import", help="Import a gold file (CSV with text,label or JSONL).")
    add_task_arguments(imp)
    imp.add_argument("file")
    imp.set_defaults(handler=handle_import)
    stats = sub.add_parser("stats", help="Gold counts by split and source.")
    add_task_arguments(stats)
    stats.set_defaults(handler=handle_stats)


def handle_import(args: argparse.Namespace) -> int:
    from protege.improver.data.gold import import_gold_file

    _, task, store = open_task(args)
    try:
        summary = import_gold_file(store, task, args.file)
    except ValueError as exc:
        raise SystemExit(f"gold import failed, nothing imported: {exc}") from None
    finally:
        store.close()
    print(json.dumps({"task": task.name, **summary}))
    return 0


def handle_stats(args: argparse.Namespace) -> int:
    from collections import Counter

    from protege.improver.data.gold import gold_examples

    _, task, store = open_task(args)
    try:
        gold = gold_examples(store, task)
    finally:
        store.close()
    by = Counter((g.split, g.source.split(":")[0]) for g in gold)
    print(
        json.dumps(
            {
                "task": task.name,
                "total": len(gold),
                **{f"{s}/{src}": n for (s, src), n in sorted(by.items())},
            }
        )
    )
    return 0
