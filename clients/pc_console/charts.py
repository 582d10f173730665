"""Charts drawn on the server as inline SVG (no JavaScript, no vendored library).

``bars(rows)`` — one horizontal bar per (label, value); ``stacked(rows, series)`` — one bar per
label split into coloured segments (timings per step, verdicts per job, jobs per requester);
``usage(rows)`` — one track per counter, filled to its share of the limit (a node's quota use).
Labels are escaped; every bar carries a <title> with its number for screen readers and hover.
"""
from __future__ import annotations

from html import escape

from markupsafe import Markup

PALETTE = ("#2f6fb0", "#e08a1e", "#3a9d5d", "#c2413b", "#7a5cad", "#8c6d31", "#d46aa6", "#5f7f8f")
ROW_H, LABEL_W, BAR_W, PAD = 22, 170, 420, 6


def _fmt(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def stacked(rows: list[tuple[str, dict[str, float]]], series: list[str], unit: str = "",
            title: str = "") -> Markup:
    """One bar per row, segments in the order of ``series``, scaled to the largest total."""
    if not rows:
        return Markup("")
    top = max((sum(max(v, 0) for v in r.values()) for _, r in rows), default=0) or 1
    legend_h = ROW_H
    h = PAD * 2 + legend_h + ROW_H * len(rows)
    w = LABEL_W + BAR_W + 90
    out = [f'<svg class="chart" role="img" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}"><title>{escape(title)}</title>']
    x = LABEL_W
    for i, name in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{PAD}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{PAD + 10}" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    for j, (label, values) in enumerate(rows):
        y = PAD + legend_h + j * ROW_H
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 14}" font-size="12" text-anchor="end">{escape(label)}</text>')
        x, total = float(LABEL_W), 0.0
        for i, name in enumerate(series):
            v = max(float(values.get(name, 0) or 0), 0.0)
            if v <= 0:
                continue
            bw = BAR_W * v / top
            out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{max(bw, 0.5):.1f}" height="{ROW_H - 6}" '
                       f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(name)}: {_fmt(v)}{escape(unit)}</title></rect>')
            x += bw
            total += v
        out.append(f'<text x="{x + 4:.1f}" y="{y + 14}" font-size="11">{_fmt(round(total, 3))}{escape(unit)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bars(rows: list[tuple[str, float]], unit: str = "", title: str = "") -> Markup:
    """One plain bar per (label, value)."""
    name = title or "value"
    return stacked([(label, {name: v}) for label, v in rows], [name], unit, title)


def usage(rows: list[tuple[str, float, float]], title: str = "", label_w: int = LABEL_W + 60) -> Markup:
    """One track per (label, used, limit): the track is the limit, the filled part what is used
    (red once 90 % or more), the text ``used / limit``. Counters of different units compare as
    shares of their own limits, so jobs and subjects fit one chart."""
    if not rows:
        return Markup("")
    h = PAD * 2 + ROW_H * len(rows)
    w = label_w + BAR_W + 150
    out = [f'<svg class="chart usage" role="img" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}"><title>{escape(title)}</title>']
    for j, (label, used, limit) in enumerate(rows):
        y = PAD + j * ROW_H
        share = min(max(used, 0) / limit, 1.0) if limit > 0 else (1.0 if used > 0 else 0.0)
        color = PALETTE[3] if share >= 0.9 else PALETTE[0]
        text = f"{_fmt(used)} / {_fmt(limit)}"
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end">{escape(label)}</text>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{BAR_W}" height="{ROW_H - 6}" fill="#e4e8ee"/>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{max(BAR_W * share, 0.5):.1f}" height="{ROW_H - 6}" '
                   f'fill="{color}"><title>{escape(label)}: {escape(text)}</title></rect>'
                   f'<text x="{label_w + BAR_W + 6}" y="{y + 14}" font-size="11">{escape(text)}'
                   f' ({share * 100:.1f}%)</text>')
    out.append("</svg>")
    return Markup("".join(out))
