"""`protege demo`: the whole loop on real data, on this machine (what `make run` runs).

Starts the embedded broker, the Serve app and the improver in a fresh run folder,
replays a data set as client traffic with simulated reviewers, shows progress live,
and ends with a summary table and a chart in the run folder. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protege.demo.options import DemoOptions

# The run worked but no specialist was promoted (too short a replay, or the gate said no):
# not a crash, and not the demo's point either.
NO_PROMOTION = 3


class _DefaultsUnlessNone(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except None ones: their help says what leaving them out does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    from protege.demo.options import DemoOptions

    d = DemoOptions()
    parser = subparsers.add_parser(
        "demo",
        help="replay real traffic with simulated reviewers and watch specialists take over",
        description=__doc__,
        formatter_class=_DefaultsUnlessNone,
    )

    def per_task(name: str) -> str:
        """The default of a knob that differs by task, for --help."""
        values = {
            task: getattr(DemoOptions.for_task(task), name)
            for task in ("youtube-spam", "banking77")
        }
        return "; default " + ", ".join(
            f"{task} {'off' if value is None else value}" for task, value in values.items()
        )

    parser.add_argument(
        "--task",
        default=d.task,
        choices=["youtube-spam", "banking77"],
        help="the data set replayed (and the task it is sent to)",
    )
    parser.add_argument("--split", default=d.split, help="the data set's split replayed")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="shuffles the stream and the reviews"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=d.limit,
        help="texts to replay (default: the rest of the split)",
    )
    parser.add_argument(
        "--gold",
        type=int,
        default=None,
        help="texts set aside as the task owner's gold labels, split by text hash (a "
        "fifth the gate's exam, a tenth the calibration set, the rest train)" + per_task("gold"),
    )
    parser.add_argument(
        "--exam-gold",
        type=int,
        default=None,
        help="and texts of the exam and calibration buckets only: the owner's evaluation "
        "set" + per_task("exam_gold"),
    )
    parser.add_argument(
        "--reviews-needed",
        type=int,
        default=None,
        help="reviewers an item of the review queue waits for (2: their agreement makes "
        "trusted gold)" + per_task("reviews_needed"),
    )
    parser.add_argument(
        "--review-share",
        type=float,
        default=None,
        help="share of predictions that reviewers answer" + per_task("review_share"),
    )
    parser.add_argument(
        "--error-rate", type=float, default=d.error_rate, help="share of reviews that are wrong"
    )
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight")
    parser.add_argument(
        "--retrain-every",
        type=int,
        default=None,
        help="the improver trains after this many new feedback events" + per_task("retrain_every"),
    )
    parser.add_argument(
        "--retrain-minutes",
        type=float,
        default=None,
        help="and also on this timer (minutes)" + per_task("retrain_minutes"),
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="the replay stops sending after this long" + per_task("max_minutes"),
    )
    parser.add_argument(
        "--window", type=int, default=d.window, help="requests averaged by the running figures"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/demo-<task>-<UTC time>)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="HTTP port (default PROTEGE_HTTP_PORT, or a free one when taken)",
    )
    parser.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The run's options: the task's presets where a flag was left out; checked."""
    from protege.demo.options import DemoOptions

    options = DemoOptions.for_task(
        args.task,
        split=args.split,
        seed=args.seed,
        limit=args.limit,
        gold=args.gold,
        exam_gold=args.exam_gold,
        reviews_needed=args.reviews_needed,
        review_share=args.review_share,
        error_rate=args.error_rate,
        concurrency=args.concurrency,
        retrain_every=args.retrain_every,
        retrain_minutes=args.retrain_minutes,
        max_minutes=args.max_minutes,
        window=args.window,
        out=args.out,
        port=args.port,
    )
    if not 0 <= options.review_share <= 1 or not 0 <= options.error_rate <= 1:
        raise SystemExit("--review-share and --error-rate are fractions in [0, 1]")
    if options.gold < 0 or options.exam_gold < 0 or options.retrain_every < 1:
        raise SystemExit("--gold and --exam-gold must be >= 0 and --retrain-every >= 1")
    if options.reviews_needed < 1:
        raise SystemExit("--reviews-needed must be >= 1")
    return options


def run(args: argparse.Namespace) -> int:
    from protege.demo.runner import run_demo

    result = run_demo(options_from_args(args))
    if result.interrupted:
        return 130
    return 0 if result.record.promotions else NO_PROMOTION
