"""What the improver's commands share: which task, which store, which tasks file."""

from __future__ import annotations

import argparse


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="Task name, as in the tasks file.")
    parser.add_argument("--store", help="SQLAlchemy URL of the example store (default: settings).")
    parser.add_argument("--tasks-file", help="Tasks YAML (default: the settings' tasks).")


def open_task(args: argparse.Namespace):
    """(settings, task spec, store) for a command's arguments; an unknown task is an error."""
    from protege.improver.data.store import ExampleStore
    from protege.settings import Settings
    from protege.taskspec import load_tasks

    settings = Settings()
    tasks = load_tasks(args.tasks_file) if args.tasks_file else settings.load_tasks()
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; tasks: {', '.join(sorted(tasks))}")
    return settings, tasks[args.task], ExampleStore(args.store or settings.store_url)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources",
        default=None,
        help="Comma-separated LF sources (rule,python,prompt,feedback,model); default all.",
    )


def sources_of(args: argparse.Namespace) -> tuple[str, ...]:
    from protege.improver.labeling.functions import SOURCES

    if not args.sources:
        return SOURCES
    return tuple(s.strip() for s in args.sources.split(",") if s.strip())
