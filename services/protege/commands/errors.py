"""`protege errors TASK`: guided error analysis. Lists, grouped by the label model's
label, the examples where the foundation model and the label model disagree or a
reviewer said thumbs-down, with the LFs that voted on each."""

from __future__ import annotations

import argparse
import json

from protege.commands.task_options import (
    add_source_arguments,
    add_task_arguments,
    open_task,
    sources_of,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("errors", help="Examples where models and labels disagree.")
    add_task_arguments(parser)
    add_source_arguments(parser)
    parser.add_argument("--limit", type=int, default=10, help="Examples shown per label.")
    parser.add_argument("--json", action="store_true", help="Print as JSON.")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from protege.improver.labeling.analysis import error_cases, format_error_cases
    from protege.improver.labeling.labeled import label_store

    _, task, store = open_task(args)
    try:
        data = label_store(task, store, sources=sources_of(args))
    finally:
        store.close()
    groups = error_cases(data, limit_per_label=None)
    totals = {label: len(cases) for label, cases in groups.items()}
    shown = {label: cases[: args.limit] for label, cases in groups.items()}
    if args.json:
        print(json.dumps({"task": task.name, "totals": totals, "groups": shown}, indent=2))
    else:
        print(f"task {task.name}: {sum(totals.values())} examples to review")
        print(format_error_cases(shown, totals))
    return 0
