"""The task page's chart, drawn on the server as inline SVG (no script, no library):
accuracy of the served answers on trusted gold and the foundation model's share of
answers, per time bucket, with each registry decision marked where it happened."""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape

from protege.schemas import Timeline

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 18, 40
ACCURACY, FM_SHARE = "#1f6fb4", "#e07b1a"
DECISION_STYLE = {
    "promoted": ("#2a9d4b", ""),
    "rolled_back": ("#c0392b", "6 4"),
    "rejected": ("#999999", "2 4"),
}


@dataclass(frozen=True)
class Decision:
    at: float  # unix seconds
    action: str  # promoted, rolled_back, rejected
    version: str


def _clock(at: float, span_s: float) -> str:
    fmt = "%H:%M" if span_s < 2 * 86_400 else "%d %b"
    return time.strftime(fmt, time.gmtime(at))


def timeline_svg(timeline: Timeline, decisions: list[Decision]) -> str:
    """The chart as an <svg> element (every text in it escaped)."""
    buckets = [b for b in timeline.buckets if b.predictions]
    if not buckets:
        return '<p class="muted">No traffic recorded yet.</p>'
    start, end = timeline.buckets[0].start, timeline.buckets[-1].end
    span = max(end - start, 1e-9)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: float) -> float:
        return LEFT + plot_w * (min(max(at, start), end) - start) / span

    def y(share: float) -> float:
        return TOP + plot_h * (1.0 - share)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="accuracy on gold and foundation-model share over time">'
    ]
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(share):.1f}" y2="{y(share):.1f}" '
            'class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(share) + 4:.1f}" class="tick" text-anchor="end">'
            f"{int(share * 100)}%</text>"
        )
    for i in range(5):
        at = start + span * i / 4
        parts.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - BOTTOM + 16}" class="tick" '
            f'text-anchor="middle">{_clock(at, span)}</text>'
        )
    for d in decisions:
        if d.at < start:  # before the traffic shown; one after it is drawn at the edge
            continue
        color, dash = DECISION_STYLE.get(d.action, ("#999999", "2 4"))
        at = x(d.at)
        parts.append(
            f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
            f'stroke="{color}" stroke-width="1.6" stroke-dasharray="{dash}">'
            f"<title>{escape(d.action.replace('_', ' '))} version {escape(d.version)}</title></line>"
            f'<text x="{at + 3:.1f}" y="{TOP + 10}" class="mark" fill="{color}">'
            f"v{escape(d.version)}</text>"
        )

    def series(points: list[tuple[float, float, str]], color: str) -> None:
        if not points:
            return
        coords = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v, _ in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for at, v, tip in points:
            parts.append(
                f'<circle cx="{x(at):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                f"<title>{escape(tip)}</title></circle>"
            )

    series(
        [
            ((b.start + b.end) / 2, b.correct / b.gold, f"{b.correct}/{b.gold} right on gold")
            for b in buckets
            if b.gold
        ],
        ACCURACY,
    )
    series(
        [
            (
                (b.start + b.end) / 2,
                b.foundation / b.predictions,
                f"{b.foundation}/{b.predictions} answered by the FM",
            )
            for b in buckets
        ],
        FM_SHARE,
    )
    legend_y = HEIGHT - 8
    parts.append(
        f'<rect x="{LEFT}" y="{legend_y - 8}" width="14" height="3" fill="{ACCURACY}"/>'
        f'<text x="{LEFT + 18}" y="{legend_y - 3}" class="legend">accuracy on trusted gold</text>'
        f'<rect x="{LEFT + 190}" y="{legend_y - 8}" width="14" height="3" fill="{FM_SHARE}"/>'
        f'<text x="{LEFT + 208}" y="{legend_y - 3}" class="legend">share answered by the FM</text>'
        f'<rect x="{LEFT + 390}" y="{legend_y - 8}" width="14" height="3" '
        f'fill="{DECISION_STYLE["promoted"][0]}"/>'
        f'<text x="{LEFT + 408}" y="{legend_y - 3}" class="legend">promotion (v = version)</text>'
        "</svg>"
    )
    return "".join(parts)
