"""`protege tasks check [FILE]`: validate a tasks file (default: the settings' tasks,
PROTEGE_TASKS_INLINE or PROTEGE_TASKS_FILE) without starting anything; one line per
problem, naming the file, the task and the field. Exit 0 when it is valid, 2 when it is not."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tasks", help="Check a tasks file.", description=__doc__)
    sub = parser.add_subparsers(dest="tasks_command", required=True)
    check = sub.add_parser("check", help="Validate a tasks file; start nothing.")
    check.add_argument(
        "file", nargs="?", help="Tasks YAML (default: PROTEGE_TASKS_INLINE or PROTEGE_TASKS_FILE)."
    )
    check.set_defaults(handler=handle_check)


def handle_check(args: argparse.Namespace) -> int:
    from protege.settings import load_settings
    from protege.taskspec import load_tasks

    # TasksFileError: reported by the CLI, exit 2
    if args.file:
        path, tasks = args.file, load_tasks(args.file)
    else:
        settings = load_settings()
        path = "PROTEGE_TASKS_INLINE" if settings.tasks_inline is not None else settings.tasks_file
        tasks = settings.load_tasks()
    for task in tasks.values():
        lfs = len(task.labeling.rules) + len(task.labeling.prompt_lfs)
        print(
            f"{task.name}: {len(task.labels)} labels, policy {task.routing.policy.value}, "
            f"{lfs} rules and prompt LFs"
        )
    print(f"{path}: {len(tasks)} task(s), valid")
    return 0
