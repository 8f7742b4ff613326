"""The demo's chart: running accuracy against the gold labels and the share of
requests the foundation model answered, over the run, with each promotion (and
rejection, and rollback) marked where the improver decided it."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt

from protege.demo.progress import minutes
from protege.demo.record import RunRecord

DECISION_STYLE = {
    "promoted": {"color": "tab:green", "linestyle": "-", "linewidth": 1.8},
    "rejected": {"color": "0.6", "linestyle": ":", "linewidth": 1.2},
    "rolled_back": {"color": "tab:red", "linestyle": "--", "linewidth": 1.5},
}


def write_chart(record: RunRecord, path: Path, window: int = 100) -> Path:
    """A PNG at `path`; `window` is the number of recent requests each point averages.

    The x axis counts requests rather than minutes: a specialist answers in milliseconds,
    so after a promotion minutes would squeeze most of the traffic into a sliver."""
    series = record.series(window)
    count = np.arange(1, series["t"].size + 1)
    # The first few points average a handful of answers each: noise, not signal.
    skip = min(max(window // 5, 1), max(count.size - 1, 0))
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    ax.plot(
        count[skip:],
        100 * series["accuracy"][skip:],
        color="tab:blue",
        linewidth=2,
        label=f"accuracy vs gold (last {window} requests)",
    )
    ax.plot(
        count[skip:],
        100 * series["fm_share"][skip:],
        color="tab:orange",
        linewidth=2,
        label=f"share answered by the foundation model (last {window})",
    )
    seen = set()
    for d in record.snapshot()[1]:
        style = DECISION_STYLE.get(d.action)
        if style is None:
            continue
        at = int(np.searchsorted(series["t"], d.t, side="right"))  # requests answered by then
        label = d.action.replace("_", " ") if d.action not in seen else None
        seen.add(d.action)
        ax.axvline(at, label=label, **style)
        if d.action != "rejected":
            # Beside the line, low down: before a promotion that corner is usually empty
            # (the FM's share is high, accuracy middling).
            ax.text(
                at,
                3,
                f" {d.model} v{d.version} at {minutes(d.t)} ",
                rotation=90,
                va="bottom",
                ha="right",
                fontsize=8,
                color=style["color"],
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
    ax.set_ylim(0, 105)  # a share of 100 % must not hide under the frame
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(0, max(int(count.size), 1))
    ax.set_xlabel("requests answered (decisions marked with the run time, m:ss)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.set_title(
        f"Protégé demo — {record.task}: accuracy and the foundation model's share "
        "as specialists are promoted",
        fontsize=11,
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
