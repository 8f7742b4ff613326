"""The end of a demo run: a table with one row per champion (day 0, then after each
promotion) and the run's totals, printed and written to the run folder
(`summary.json` for machines, `summary.txt` for people)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from protege.demo.progress import minutes, percent
from protege.demo.record import Outcome, RunRecord


def phase_table(record: RunRecord) -> Table:
    table = Table(title=f"Protégé demo — {record.task}", title_justify="left")
    table.add_column("who was champion")
    table.add_column("from", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("accuracy vs gold", justify="right")
    table.add_column("answered by the FM", justify="right")
    table.add_column("p50 latency", justify="right")
    for phase in record.phases():
        latency = "—" if phase.p50_latency_ms is None else f"{phase.p50_latency_ms:.0f} ms"
        table.add_row(
            phase.name,
            minutes(phase.start),
            str(phase.requests),
            percent(phase.accuracy),
            percent(phase.fm_share),
            latency,
        )
    return table


def totals_text(record: RunRecord, wall_s: float) -> Text:
    t = record.totals()
    lines = [
        (
            f"run time {minutes(wall_s)} (start-up included); requests {t['requests']}; "
            f"feedback {t['feedback']} ({t['feedback_down']} thumbs-down)"
        ),
        f"training runs {t['training_runs']}: promoted {t['promotions']}, rejected {t['rejections']}"
        + (f", rolled back {t['rollbacks']}" if t["rollbacks"] else "")
        + (
            ""
            if t["first_promotion_s"] is None
            else f"; first promotion {minutes(t['first_promotion_s'])} into the replay"
        ),
    ]
    if t["errors"]:
        lines.append(f"errors: {dict(record.errors)}")
    return Text("\n".join(lines))


def decisions_text(record: RunRecord) -> Text:
    lines = []
    for d in record.snapshot()[1]:
        accuracy = "" if d.accuracy is None else f", gold accuracy {percent(d.accuracy)}"
        lines.append(
            f"  {minutes(d.t)} {d.action} {d.model} v{d.version}{accuracy}: " + "; ".join(d.reasons)
        )
    return Text("improver decisions:\n" + "\n".join(lines) if lines else "no improver decisions")


def render(record: RunRecord, wall_s: float) -> Group:
    return Group(phase_table(record), totals_text(record, wall_s), decisions_text(record))


def write(record: RunRecord, folder: Path, wall_s: float, extra: dict | None = None) -> Path:
    """summary.json, summary.txt and every answer (outcomes.csv) in `folder`; returns the
    JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = record.snapshot()[0]
    with open(folder / "outcomes.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Outcome)])
        writer.writeheader()
        writer.writerows(asdict(o) for o in outcomes)
    data = {**record.to_dict(), "wall_s": wall_s, **(extra or {})}
    path = folder / "summary.json"
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render(record, wall_s))
    (folder / "summary.txt").write_text(console.export_text(), encoding="utf-8")
    return path
