"""Line charts as SVG, drawn on the server: no charting library, nothing fetched by the browser."""

from __future__ import annotations

import math
from html import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 540, 230, 56, 130, 28, 36


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if raw <= m * step)
    if integer:
        step = max(step, 1)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2e}"


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str = "step") -> str:
    """One chart: each series a polyline with its points marked, a legend on the right."""
    points = [p for pts in series.values() for p in pts if all(map(math.isfinite, p))]
    head = f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" ' \
           f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>' \
           f'<text x="{LEFT}" y="18" class="chart-title">{escape(title)}</text>'
    if not points:
        return head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">no data yet</text></svg>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x):
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    out = [head, f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="plot"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, integer=all(float(p[0]).is_integer() for p in points)):
        out.append(f'<text x="{sx(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 4}" text-anchor="middle" class="tick">{escape(x_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [p for p in pts if all(map(math.isfinite, p))]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{escape(name)}" points="{coords}" fill="none" '
                   f'stroke="{color}" stroke-width="2"/>')
        if len(pts) <= 60:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>{escape(name)} '
                    f'step {_fmt(x)}: {_fmt(y)}</title></circle>' for x, y in pts]
        ly = TOP + 14 + 18 * i
        out.append(f'<line x1="{W - RIGHT + 12}" x2="{W - RIGHT + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                   f'stroke-width="3"/><text x="{W - RIGHT + 35}" y="{ly}" class="legend">{escape(name[:22])}</text>')
    return "".join(out) + "</svg>"
