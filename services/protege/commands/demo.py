"""`protege demo`: the whole loop on real data, on this machine (what `make run` runs).

Starts the embedded broker, the Serve app and the improver in a fresh run folder,
replays a data set as client traffic with simulated reviewers, shows progress live,
and ends with a summary table and a chart in the run folder. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The run worked but no specialist was promoted (too short a replay, or the gate said no):
# not a crash, and not the demo's point either.
NO_PROMOTION = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    from protege.demo.options import DemoOptions

    d = DemoOptions()
    parser = subparsers.add_parser(
        "demo", help="replay real traffic with simulated reviewers and watch specialists take over",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--task", default=d.task, choices=["youtube-spam", "banking77"],
                        help="the data set replayed (and the task it is sent to)")
    parser.add_argument("--split", default=d.split, help="the data set's split replayed")
    parser.add_argument("--seed", type=int, default=d.seed, help="shuffles the stream and the reviews")
    parser.add_argument("--limit", type=int, default=d.limit,
                        help="texts to replay (default: the rest of the split)")
    parser.add_argument("--gold", type=int, default=d.gold,
                        help="texts set aside as the task owner's gold labels (the gate's exam "
                        "is a fifth of them); 0: reviewers' labels only")
    parser.add_argument("--review-share", type=float, default=d.review_share,
                        help="share of predictions that reviewers answer")
    parser.add_argument("--error-rate", type=float, default=d.error_rate,
                        help="share of reviews that are wrong")
    parser.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight")
    parser.add_argument("--retrain-every", type=int, default=d.retrain_every,
                        help="the improver trains after this many new feedback events")
    parser.add_argument("--retrain-minutes", type=float, default=d.retrain_minutes,
                        help="and also on this timer")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes,
                        help="the replay stops sending after this long")
    parser.add_argument("--window", type=int, default=d.window,
                        help="requests averaged by the running figures")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default runs/demo-<task>-<UTC time>)")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port (default PROTEGE_HTTP_PORT, or a free one when taken)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protege.demo.options import DemoOptions
    from protege.demo.runner import run_demo

    if not 0 <= args.review_share <= 1 or not 0 <= args.error_rate <= 1:
        raise SystemExit("--review-share and --error-rate are fractions in [0, 1]")
    if args.gold < 0 or args.retrain_every < 1:
        raise SystemExit("--gold must be >= 0 and --retrain-every >= 1")
    options = DemoOptions(
        task=args.task, split=args.split, seed=args.seed, limit=args.limit, gold=args.gold,
        review_share=args.review_share, error_rate=args.error_rate, concurrency=args.concurrency,
        retrain_every=args.retrain_every, retrain_minutes=args.retrain_minutes,
        max_minutes=args.max_minutes, window=args.window, out=args.out, port=args.port,
    )
    result = run_demo(options)
    if result.interrupted:
        return 130
    return 0 if result.record.promotions else NO_PROMOTION
