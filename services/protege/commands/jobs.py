"""`protege jobs list|logs JOB|stop JOB`: the improver's training jobs on Ray's Jobs API
(PROTEGE_RAY_DASHBOARD_URL, default the local Ray's dashboard at http://127.0.0.1:8265).

Stopping a job fails the round that waits for it; the champion keeps serving.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from protege.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list, read or stop the improver's training jobs on Ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="running and finished jobs, newest first")
    listing.add_argument("--task", help="only this task's")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    logs = actions.add_parser("logs", help="a job's log (its stdout and stderr)")
    logs.add_argument("job")
    stop = actions.add_parser("stop", help="stop a job: its round fails")
    stop.add_argument("job")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from protege import jobs

    settings = settings or Settings()
    try:
        if args.action == "list":
            return _list(jobs.list_jobs(settings, args.task), args.json)
        if args.action == "logs":
            print(jobs.job_logs(settings, args.job), end="")
            return 0
        job = jobs.stop_job(settings, args.job)
        if job.status in jobs.TERMINAL:
            print(f"{job.id}: already {job.status}")
        else:
            print(f"{job.id}: stopping ({job.task}, round {job.round})")
        return 0
    except (jobs.JobsUnavailable, jobs.UnknownJob) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _list(found: list, as_json: bool) -> int:
    if as_json:
        print(json.dumps([j.to_dict() for j in found], indent=2))
        return 0
    if not found:
        print("no training jobs")
        return 0
    print(f"{'JOB':<52} {'TASK':<16} {'ROUND':<21} {'TRIGGER':<10} {'STATUS':<10} STARTED (UTC)")
    for j in found:
        print(
            f"{j.id:<52} {j.task:<16} {j.round:<21} {j.trigger:<10} {j.status:<10} "
            f"{_when(j.start_time)}"
        )
    return 0
