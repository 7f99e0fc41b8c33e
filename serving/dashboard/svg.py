"""Line plots as inline SVG, drawn on the server: no JavaScript library, no external file.

:func:`line_plot` takes series of ``(time in epoch ms, value or None)`` points and returns one
``<svg>`` element: axes with round ticks, a line per series (broken where a value is None), a dot
per point whose ``<title>`` is its tooltip, an optional dashed threshold line and a legend. Every
text is escaped; the output is safe to embed in a page as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

__all__ = ["Series", "line_plot", "PALETTE", "nice_ticks", "time_ticks", "time_label"]

#: Colour-blind-safe line colours (Okabe-Ito), in series order.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000")

_W, _H = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 30, 28


@dataclass(frozen=True)
class Series:
    """One line: its legend ``label`` and its ``points`` (x in epoch ms, y or None for a gap)."""

    label: str
    points: Sequence[tuple[int, float | None]]
    color: str | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values covering ``[low, high]`` (1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


_STEPS_MS = [
    s * 1000 for s in (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
] + [d * 86_400_000 for d in (1, 2, 7, 14, 30, 91, 182, 365)]


def time_ticks(x0: int, x1: int, most: int = 6) -> list[int]:
    """Round UTC times in ``[x0, x1]`` (every 5 min, hour, day...), at most about ``most``."""
    span = max(1, x1 - x0)
    step = next((s for s in _STEPS_MS if span / s <= most), _STEPS_MS[-1])
    first = -(-x0 // step) * step
    return list(range(int(first), int(x1) + 1, step))


def time_label(ms: int, span_ms: int) -> str:
    """A UTC label for an axis covering ``span_ms``: ``HH:MM``, with the date past a day."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%m-%d %H:%M" if span_ms > 86_400_000 else "%H:%M")


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000 or abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.4g}"


def line_plot(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str = "",
    y_min: float | None = None,
    y_max: float | None = None,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    width: int = _W,
    height: int = _H,
) -> str:
    """One ``<svg class="plot">`` of ``series``; ``data-points`` counts the points drawn."""
    points = [(x, y) for s in series for x, y in s.points if y is not None and math.isfinite(y)]
    head = (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-label="{escape(title)}"'
        f' data-points="{len(points)}"><title>{escape(title)}</title>'
        f'<text x="{_LEFT}" y="16" class="plot-title">{escape(title)}</text>'
    )
    if not points:
        middle = f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" class="plot-empty"'
        return head + middle + ' text-anchor="middle">no data yet</text></svg>'
    xs = [x for x, _ in points]
    ys = [y for _, y in points] + ([threshold] if threshold is not None else [])
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 60_000, x1 + 60_000
    low = min(ys) if y_min is None else min(y_min, min(ys))
    high = max(ys) if y_max is None else max(y_max, max(ys))
    ticks = nice_ticks(low, high)
    low, high = min(ticks[0], low), max(ticks[-1], high)
    if high == low:
        high = low + 1.0
    legend_w = sum(18 + 6.5 * len(line.label) for line in series)
    two_rows = _LEFT + 7 * len(title) + 16 + legend_w > width - _RIGHT
    top = _TOP + 16 if two_rows else _TOP
    plot_w, plot_h = width - _LEFT - _RIGHT, height - top - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (high - y) / (high - low) * plot_h

    parts = [head]
    for tick in ticks:
        y = py(tick)
        parts.append(
            f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_number(tick))}</text>"
        )
    span = x1 - x0
    for x in time_ticks(x0, x1):
        parts.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"'
            f' class="axis"/><text x="{px(x):.1f}" y="{height - 8}" text-anchor="middle"'
            f' class="tick">{escape(time_label(x, span))}</text>'
        )
    parts.append(
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{top}" y2="{top + plot_h}" class="axis"/>'
        f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{top + plot_h}" y2="{top + plot_h}"'
        ' class="axis"/>'
    )
    if y_label:
        parts.append(
            f'<text x="12" y="{top + plot_h / 2:.0f}" class="tick" text-anchor="middle"'
            f' transform="rotate(-90 12 {top + plot_h / 2:.0f})">{escape(y_label)}</text>'
        )
    if threshold is not None:
        y = py(threshold)
        parts.append(
            f'<line x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"'
            f' class="threshold"><title>{escape(threshold_label)}: {escape(_number(threshold))}'
            "</title></line>"
        )
    legend_x = float(_LEFT) if two_rows else width - _RIGHT - legend_w
    legend_y = 24 if two_rows else 8
    for index, line in enumerate(series):
        color = line.color or PALETTE[index % len(PALETTE)]
        parts.append(
            f'<rect x="{legend_x:.0f}" y="{legend_y}" width="10" height="10"'
            f' fill="{escape(color)}"/><text x="{legend_x + 13:.0f}" y="{legend_y + 9}"'
            f' class="legend">{escape(line.label)}</text>'
        )
        legend_x += 18 + 6.5 * len(line.label)
    for index, line in enumerate(series):
        parts.extend(_line(line, line.color or PALETTE[index % len(PALETTE)], px, py))
    parts.append("</svg>")
    return "".join(parts)


def _line(line: Series, color: str, px: object, py: object) -> list[str]:
    """A polyline per unbroken run of ``line``'s points, and a dot with a tooltip per point."""
    out: list[str] = []
    run: list[str] = []
    dots: list[str] = []
    safe = escape(color)
    for x, y in sorted(line.points, key=lambda p: p[0]):
        if y is None or not math.isfinite(y):
            if len(run) > 1:
                out.append(f'<polyline points="{" ".join(run)}" stroke="{safe}" class="line"/>')
            run = []
            continue
        cx, cy = px(x), py(y)  # type: ignore[operator]
        run.append(f"{cx:.1f},{cy:.1f}")
        tip = f"{line.label}: {_number(y)} at {time_label(x, 0)} UTC"
        dots.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{safe}" class="dot">'
            f"<title>{escape(tip)}</title></circle>"
        )
    if len(run) > 1:
        out.append(f'<polyline points="{" ".join(run)}" stroke="{safe}" class="line"/>')
    return out + dots
