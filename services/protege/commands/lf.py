"""`protege lf report TASK [--json]`: what each labeling function does on the store's
examples (coverage, overlaps, conflicts, accuracy on gold) and what the label model
makes of them. `--save` keeps a copy in the store (training runs always do)."""

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
    parser = subparsers.add_parser("lf", help="Labeling functions: reports.")
    sub = parser.add_subparsers(dest="lf_command", required=True)
    report = sub.add_parser("report", help="Per-LF coverage, overlaps, conflicts and accuracy.")
    add_task_arguments(report)
    add_source_arguments(report)
    report.add_argument("--json", action="store_true", help="Print the report as JSON.")
    report.add_argument("--save", action="store_true", help="Keep a copy in the store.")
    report.set_defaults(handler=handle_report)


def handle_report(args: argparse.Namespace) -> int:
    from protege.improver.labeling.analysis import format_lf_report, lf_report, save_lf_report
    from protege.improver.labeling.labeled import label_store

    _, task, store = open_task(args)
    try:
        data = label_store(task, store, sources=sources_of(args))
        report = save_lf_report(store, data) if args.save else lf_report(data)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else format_lf_report(report))
    return 0
