"""Inline SVG charts: line charts (one or more series over training steps) and histograms.

Plain SVG text built on the server: no script, no library, readable from a saved file. Every
point is a `<circle class="pt">` with its step and value as data attributes and a `<title>`
tooltip, so a reader (or a test) can find each value in the DOM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from treerpo.web.markup import attr, esc

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40
SERIES_COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (x, y); non-finite y are left out


def nice_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering
    [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:  # one value: a band around it (from 0 when it is not negative)
        pad = abs(low) * 0.1 or 1.0
        low, high = (max(0.0, low - pad) if low >= 0 else low - pad), high + pad
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 0.5 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def format_number(value: float) -> str:
    """Short, readable tick and tooltip numbers: 0.25, 1.2k, 3e-05."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value / 1000:.3g}k"
    if magnitude < 1e-3:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:.4g}"


def _svg_open(title: str) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{attr(title)}">')


def _y_grid_line(y: float, tick: float) -> str:
    """A horizontal grid line at height `y` with its value on the left."""
    return (f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{esc(format_number(tick))}</text>')


def _x_tick(x: float, tick: float) -> str:
    """A tick mark under the plot at `x` with its value below."""
    bottom = HEIGHT - BOTTOM
    return (f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" '
            f'y2="{bottom + 4}"/><text class="tick" x="{x:.1f}" '
            f'y="{bottom + 17}" text-anchor="middle">{esc(format_number(tick))}</text>')


def _frame(*, x_label: str, y_label: str) -> list[str]:
    """The two axes and their labels (the y label turned up the left side)."""
    bottom, plot_w = HEIGHT - BOTTOM, WIDTH - LEFT - RIGHT
    return [f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" '
            f'y2="{bottom}"/><line class="axis" x1="{LEFT}" x2="{LEFT}" '
            f'y1="{TOP}" y2="{bottom}"/>',
            f'<text class="label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
            f'text-anchor="middle">{esc(x_label)}</text>',
            f'<text class="label" transform="translate(14 {TOP + (bottom - TOP) / 2:.1f}) '
            f'rotate(-90)" text-anchor="middle">{esc(y_label)}</text>']


def line_chart(*, title: str, unit: str, series: Sequence[Series], x_label: str = "step",
               chart_id: str = "", x_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart: axes with round ticks (whole ones when every x is whole, as steps
    are), the y unit in the axis label, one polyline and one marked point per value of each
    series, a legend when there are several. `x_range` widens the x axis (e.g. to all of a
    run's steps when a series has values at a few of them)."""
    finite = [(x, y) for one in series for x, y in one.points
              if y is not None and math.isfinite(y)]
    header = f'<figure class="chart" id="{attr(chart_id)}"><figcaption>{esc(title)}</figcaption>'
    if not finite:
        return header + '<p class="muted">no values recorded</p></figure>'
    xs = [x for x, _ in finite]
    ys = [y for _, y in finite]
    x_low, x_high = min(xs), max(xs)
    if x_range is not None:
        x_low, x_high = min(x_low, x_range[0]), max(x_high, x_range[1])
    x_ticks = nice_ticks(x_low, x_high)
    if all(float(x).is_integer() for x in xs):
        whole = [tick for tick in x_ticks if float(tick).is_integer()]
        if len(whole) < 2:  # one step: a unit either side
            low_tick, high_tick = math.floor(x_low), math.ceil(x_high)
            pad = int(low_tick == high_tick)
            whole = list(range(low_tick - pad, high_tick + 1 + pad))
        x_ticks = whole
    if x_low < x_high:  # the axis spans the steps exactly; round ticks inside, and the ends
        inside = [tick for tick in x_ticks if x_low <= tick <= x_high]
        for end in (x_low, x_high):
            if all(abs(end - tick) > 0.08 * (x_high - x_low) for tick in inside):
                inside.append(end)
        x_ticks = sorted(inside)
    else:  # one x: the ticks around it
        x_low, x_high = x_ticks[0], x_ticks[-1]
    y_ticks = nice_ticks(min(ys), max(ys))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_low) / ((x_high - x_low) or 1) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y_low) / ((y_high - y_low) or 1) * plot_h

    parts = [_svg_open(title)]
    for tick in y_ticks:
        y = sy(tick)
        parts.append(_y_grid_line(y, tick))
    for tick in x_ticks:
        x = sx(tick)
        parts.append(_x_tick(x, tick))
    parts += _frame(x_label=x_label, y_label=unit)
    for number, one in enumerate(series):
        colour = SERIES_COLOURS[number % len(SERIES_COLOURS)]
        points = [(x, y) for x, y in one.points if y is not None and math.isfinite(y)]
        if not points:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        # Later series dashed: two equal series (on-policy = all-leaf reward under resample
        # branching) stay visible as one line drawn over the other.
        dash = ' stroke-dasharray="6 4"' if number else ""
        parts.append(f'<polyline class="line" fill="none" stroke="{colour}" '
                     f'stroke-width="1.6"{dash} points="{path}"/>')
        radius = 2.5 if len(points) <= 60 else 1.4
        for x, y in points:
            parts.append(
                f'<circle class="pt" data-series="{attr(one.label)}" data-x="{x:g}" '
                f'data-y="{y!r}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{radius}" '
                f'fill="{colour}"><title>{esc(one.label)} · {esc(x_label)} {x:g}: '
                f'{esc(format_number(y))}</title></circle>')
        if len(series) > 1:
            legend_x = LEFT + 8 + sum(28 + 6.5 * len(earlier.label)
                                      for earlier in series[:number])
            parts.append(f'<rect x="{legend_x}" y="8" width="10" height="10" '
                         f'fill="{colour}"/><text class="legend" x="{legend_x + 14}" y="17">'
                         f'{esc(one.label)}</text>')
    parts.append("</svg></figure>")
    return header + "".join(parts)


def histogram(*, title: str, unit: str, values: Sequence[float], bins: int = 10,
              low: float | None = None, high: float | None = None,
              chart_id: str = "") -> str:
    """An SVG histogram of `values` over `bins` equal bins from `low` to `high` (default: the
    values' range; whole-number values get whole-number bins); each bar is a
    `<rect class="bar">` with its count."""
    header = f'<figure class="chart" id="{attr(chart_id)}"><figcaption>{esc(title)}</figcaption>'
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return header + '<p class="muted">no values recorded</p></figure>'
    low = min(finite) if low is None else low
    high = max(finite) if high is None else high
    whole = all(float(value).is_integer() for value in finite) and float(low).is_integer()
    if whole:  # counts, lengths: bins of whole numbers, the last one holding `high`
        width = float(max(1, math.ceil((high - low + 1) / bins)))
        bins = max(1, math.ceil((high - low + 1) / width))
        high = low + bins * width
    else:
        if high <= low:
            high = low + 1.0
        width = (high - low) / bins
    counts = [0] * bins
    for value in finite:
        counts[min(bins - 1, max(0, int((value - low) / width)))] += 1
    top = max(counts)
    count_ticks = (list(range(top + 1)) if top <= 5
                   else [tick for tick in nice_ticks(0, top) if float(tick).is_integer()])
    top_count = count_ticks[-1] or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / bins
    parts = [_svg_open(title)]
    for tick in count_ticks:
        y = TOP + plot_h - tick / top_count * plot_h
        parts.append(_y_grid_line(y, tick))
    for index, count in enumerate(counts):
        left_edge = low + index * width
        span = (f"{format_number(left_edge)}" if whole and width == 1 else
                f"{format_number(left_edge)} to {format_number(left_edge + width - 1)}"
                if whole else
                f"{format_number(left_edge)} to {format_number(left_edge + width)}")
        bar_h = count / top_count * plot_h
        x = LEFT + index * bar_w
        parts.append(
            f'<rect class="bar" data-count="{count}" data-low="{left_edge:g}" '
            f'x="{x + 1:.1f}" y="{TOP + plot_h - bar_h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{bar_h:.1f}"><title>{esc(span)}: {count}</title></rect>')
    # Round ticks along the value axis (bar edges are rarely round numbers).
    for tick in nice_ticks(low, high):
        if low <= tick <= high and (not whole or float(tick).is_integer()):
            x = LEFT + (tick - low) / (high - low) * plot_w
            parts.append(_x_tick(x, tick))
    parts += _frame(x_label=unit, y_label="count")
    parts.append("</svg></figure>")
    return header + "".join(parts)
