"""Live progress of a demo run in the terminal (rich): traffic, who answered, running
accuracy against the gold labels, feedback, and the improver's decisions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from protege.demo.record import RunRecord

ACTION_STYLE = {"promoted": "bold green", "rejected": "yellow", "rolled_back": "red"}


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def render(record: RunRecord, *, elapsed: float, planned: int, stage: str) -> RenderableType:
    """One frame: a table of the figures and the latest decisions."""
    totals = record.totals()
    outcomes, decisions = record.snapshot()
    serving = next(
        (f"{o.model} v{o.version}" for o in reversed(outcomes) if o.route == "specialist"),
        "the foundation model alone",
    )
    window = totals["recent_window"]

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("", style="dim")
    table.add_column("whole run", justify="right")
    table.add_column(f"last {window}", justify="right")
    table.add_row("requests", f"{totals['requests']} / {planned}", "")
    table.add_row(
        "answered by the FM", percent(totals["fm_share"]), percent(totals["recent_fm_share"])
    )
    table.add_row(
        "answered by the specialist",
        percent(None if totals["fm_share"] is None else 1 - totals["fm_share"]),
        percent(None if totals["recent_fm_share"] is None else 1 - totals["recent_fm_share"]),
    )
    table.add_row(
        "accuracy vs gold", percent(totals["accuracy"]), percent(totals["recent_accuracy"])
    )
    table.add_row("feedback sent", f"{totals['feedback']} ({totals['feedback_down']} down)", "")
    table.add_row("training runs", str(totals["training_runs"]), "")
    table.add_row(
        "gate: promoted / rejected", f"{totals['promotions']} / {totals['rejections']}", ""
    )
    if totals["errors"]:
        table.add_row("errors", Text(str(totals["errors"]), style="red"), "")

    header = Text.assemble(
        ("Protégé demo ", "bold"),
        (record.task, "bold cyan"),
        f"   {minutes(elapsed)}   {stage}\n",
        ("serving: ", "dim"),
        serving,
    )
    lines = [header, table]
    if decisions:
        lines.append(Text("\nimprover decisions", style="bold"))
        for d in decisions[-5:]:
            accuracy = "" if d.accuracy is None else f" gold accuracy {percent(d.accuracy)}"
            reason = f" — {d.reasons[0]}" if d.reasons else ""
            lines.append(
                Text.assemble(
                    f"  {minutes(d.t)} ",
                    (f"{d.action.replace('_', ' ')}", ACTION_STYLE.get(d.action, "")),
                    f" {d.model} v{d.version}{accuracy}",
                    (reason[:110], "dim"),
                )
            )
    return Group(*lines)


def status_line(record: RunRecord, *, elapsed: float, planned: int, stage: str) -> str:
    """The same figures on one line, for logs and terminals that cannot redraw."""
    t = record.totals()
    return (
        f"{minutes(elapsed)} {stage}: {t['requests']}/{planned} requests, "
        f"FM answered {percent(t['recent_fm_share'])} and accuracy "
        f"{percent(t['recent_accuracy'])} of the last {t['recent_window']}; "
        f"feedback {t['feedback']}; training runs {t['training_runs']} "
        f"(promoted {t['promotions']}, rejected {t['rejections']})"
    )


class LiveProgress:
    """Redraws `frame()` a couple of times a second while in a `with` block; where the
    output is not a terminal (CI, a pipe), prints `line()` every `line_every_s` instead."""

    def __init__(
        self,
        frame: Callable[[], RenderableType],
        line: Callable[[], str],
        console: Console | None = None,
        refresh_per_second: float = 2.0,
        line_every_s: float = 30.0,
    ) -> None:
        self.console = console or Console()
        self.line = line
        self.line_every_s = line_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        if self.console.is_terminal:
            self._live = Live(
                get_renderable=frame,
                console=self.console,
                refresh_per_second=refresh_per_second,
                transient=False,
            )

    def _print_lines(self) -> None:
        while not self._stop.wait(self.line_every_s):
            self.console.print(self.line(), highlight=False)

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.__enter__()
        else:
            self._thread = threading.Thread(target=self._print_lines, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc_info)
        else:
            self._stop.set()
            self._thread.join()
            self.console.print(self.line(), highlight=False)
