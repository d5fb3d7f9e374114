"""The results as one SVG picture, written by hand (no plotting library).

Top: every row that has a target, as a horizontal bar of its ratio on a logarithmic axis, with
its target marked on the bar (green: met, red: missed, grey: not measured). Below, when the
results hold growth rows: throughput at each size relative to the smallest size (the ±15% band
shaded) and the job process's peak RSS at each size, one line per series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bench.harness import Row
from bench.report import TIMES, describe_size

WIDTH = 1100
LABEL_W = 470  # the scenario and baseline names
VALUE_W = 90  # room right of the axis for the ratio's text
BAR_ROW = 36
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
MET, MISSED, UNKNOWN = "#2e7d32", "#c62828", "#9e9e9e"
SERIES_COLOURS = ("#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#558b2f", "#ad1457")


def _text(x: float, y: float, text: str, *, size: int = 12, colour: str = "#212121",
          anchor: str = "start", weight: str = "normal", italic: bool = False,
          halo: bool = False) -> str:  # fmt: skip
    style = ' font-style="italic"' if italic else ""
    if halo:  # a white outline under the letters: readable across grid lines
        style += ' stroke="white" stroke-width="3" paint-order="stroke"'

    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{colour}" '
        f'text-anchor="{anchor}" font-weight="{weight}"{style}>{escape(text)}</text>'
    )


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _ratio_text(value: float) -> str:
    return f"{value:.2f}{TIMES}" if value < 10 else f"{value:.1f}{TIMES}"


def _nice(value: float, *, up: bool) -> float:
    """The nearest 1, 2 or 5 times a power of ten at or above (`up`) or below `value`."""
    decade = 10.0 ** math.floor(math.log10(value))
    steps = [decade * m for m in (1, 2, 5, 10)]
    return min(s for s in steps if s >= value) if up else max(s for s in steps if s <= value)


class _LogAxis:
    """x position of a ratio on a log scale between lo and hi."""

    def __init__(self, values: Iterable[float], left: float, right: float) -> None:
        finite = [v for v in values if v > 0 and math.isfinite(v)] or [1.0]
        self.lo = _nice(min(min(finite) / 1.2, 0.5), up=False)
        self.hi = _nice(max(max(finite) * 1.2, 2.0), up=True)
        self.left, self.right = left, right

    def x(self, value: float) -> float:
        value = min(max(value, self.lo), self.hi)
        span = math.log10(self.hi) - math.log10(self.lo)
        share = (math.log10(value) - math.log10(self.lo)) / span
        return self.left + share * (self.right - self.left)

    def ticks(self) -> list[float]:
        out: list[float] = []
        decade = 10.0 ** math.floor(math.log10(self.lo))
        while decade <= self.hi:
            out += [t for m in (1, 2, 5) if self.lo * 0.999 <= (t := decade * m) <= self.hi * 1.001]
            decade *= 10
        return out


def _ratio_section(rows: list[Row], top: float) -> tuple[list[str], float]:
    shown = [r for r in rows if r.target is not None and r.growth is None]
    if not shown:
        return [], top
    parts = [_text(20, top + 18, "Ratios against their targets", size=16, weight="bold"),
             _text(20, top + 36, "ratio = the job's rate over its baseline's (for ceilings: peak "
                   "RSS at the larger size over the smaller); | marks the target; log scale",
                   size=11, colour="#616161")]  # fmt: skip
    axis = _LogAxis(
        [v for r in shown for v in (r.ratio or 1.0, r.target or 1.0)],
        LABEL_W,
        WIDTH - VALUE_W,
    )
    plot_top = top + 60
    plot_bottom = plot_top + BAR_ROW * len(shown)
    for tick in axis.ticks():
        x = axis.x(tick)
        dash = "" if tick != 1 else ' stroke-dasharray="4 3"'
        colour = "#bdbdbd" if tick != 1 else "#616161"
        parts.append(f'<line x1="{x:.1f}" y1="{plot_top - 6}" x2="{x:.1f}" y2="{plot_bottom}" '
                     f'stroke="{colour}" stroke-width="1"{dash}/>')  # fmt: skip
        parts.append(_text(x, plot_top - 10, f"{tick:g}{TIMES}", size=10, colour="#616161",
                           anchor="middle"))  # fmt: skip
    for index, row in enumerate(shown):
        y = plot_top + index * BAR_ROW
        if index % 2:
            parts.append(f'<rect x="10" y="{y}" width="{WIDTH - 20}" height="{BAR_ROW}" '
                         'fill="#f5f5f5"/>')  # fmt: skip
        parts.append(_text(20, y + 15, _clip(row.scenario, 72), size=12))
        parts.append(_text(20, y + 29, _clip(f"vs {row.baseline or '-'}", 80), size=10,
                           colour="#616161"))  # fmt: skip
        assert row.target is not None
        sign = "≤" if row.target_is_ceiling else "≥"
        tx = axis.x(row.target)
        if row.ratio is None:
            why = "not measured" if not row.note else _clip(row.note, 60)
            parts.append(_text(LABEL_W + 6, y + 22, why, size=11, colour=UNKNOWN, italic=True))
        else:
            colour = MET if row.met else MISSED
            end = axis.x(row.ratio)
            parts.append(f'<rect x="{LABEL_W}" y="{y + 9}" width="{max(end - LABEL_W, 1):.1f}" '
                         f'height="{BAR_ROW - 18}" fill="{colour}" fill-opacity="0.85">'
                         f"<title>{escape(row.scenario)}: {_ratio_text(row.ratio)} "
                         f"(target {sign} {row.target:g}{TIMES})</title></rect>")  # fmt: skip
            # Right of the bar and of the target mark, so neither hides the number.
            at = min(max(end, tx + 2), WIDTH - VALUE_W) + 5
            parts.append(_text(at, y + 23, _ratio_text(row.ratio), size=11, weight="bold",
                               colour=colour, halo=True))  # fmt: skip
        parts.append(f'<line x1="{tx:.1f}" y1="{y + 4}" x2="{tx:.1f}" y2="{y + BAR_ROW - 4}" '
                     'stroke="#212121" stroke-width="2.5"/>')  # fmt: skip
        mark = f"{sign} {row.target:g}{TIMES}"
        parts.append(_text(tx + 3, y + 8, mark, size=9, colour="#212121", halo=True))
    legend_y = plot_bottom + 22
    for n, (label, colour) in enumerate((("met", MET), ("missed", MISSED))):
        x = LABEL_W + n * 90
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="14" height="12" '
                     f'fill="{colour}"/>')  # fmt: skip
        parts.append(_text(x + 20, legend_y, label, size=11))
    x = LABEL_W + 190
    parts.append(f'<line x1="{x + 7}" y1="{legend_y - 12}" x2="{x + 7}" y2="{legend_y + 3}" '
                 'stroke="#212121" stroke-width="2.5"/>')  # fmt: skip
    parts.append(_text(x + 16, legend_y, "target", size=11))
    return parts, legend_y + 20


def _growth_series(rows: list[Row]) -> dict[str, list[Row]]:
    series: dict[str, list[Row]] = {}
    for row in rows:
        if row.growth and row.growth.get("measure") == "rate":
            series.setdefault(str(row.growth["series"]), []).append(row)
    for points in series.values():
        points.sort(key=lambda r: int(r.rows))
    return series


def _panel(
    series: dict[str, list[Row]],
    *,
    left: float,
    top: float,
    width: float,
    height: float,
    title: str,
    value: Callable[[Row], float | None],
    unit: str,
    band: tuple[float, float] | None,
) -> list[str]:
    """A line chart: x = rows (log), y = value(row); one line per series."""
    parts = [_text(left, top - 12, title, size=13, weight="bold")]
    sizes = sorted({int(r.rows) for points in series.values() for r in points})
    values = [found for points in series.values() for r in points
              if (found := value(r)) is not None]  # fmt: skip
    if not sizes or not values:
        parts.append(_text(left, top + 20, "no measurements", size=11, colour=UNKNOWN))
        return parts
    top_value = max(values + list(band or []))
    bottom = min(min(values), band[0]) if band else 0.0
    step = _nice((top_value - bottom) / 4 or 1.0, up=True)
    y_lo = math.floor(bottom / step) * step if band else 0.0
    y_hi = math.ceil(top_value * 1.05 / step) * step
    lo, hi = math.log10(sizes[0]), math.log10(sizes[-1])

    def px(size: int) -> float:
        if hi == lo:
            return left + width / 2
        return left + (math.log10(size) - lo) / (hi - lo) * width

    def py(level: float) -> float:
        return top + height - (level - y_lo) / (y_hi - y_lo) * height

    parts.append(f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" '
                 'stroke="#bdbdbd"/>')  # fmt: skip
    if band:
        parts.append(f'<rect x="{left}" y="{py(band[1]):.1f}" width="{width}" '
                     f'height="{py(band[0]) - py(band[1]):.1f}" fill="#e8f5e9"/>')  # fmt: skip
        parts.append(f'<line x1="{left}" y1="{py(1.0):.1f}" x2="{left + width}" y2="{py(1.0):.1f}" '
                     'stroke="#9e9e9e" stroke-dasharray="4 3"/>')  # fmt: skip
        parts.append(_text(left + 4, py(band[1]) - 4, "±15% of the smallest size", size=10,
                           colour=MET, halo=True))  # fmt: skip
    level = y_lo
    while level <= y_hi + step / 1000:
        shown = f"{level:g}{unit}"
        parts.append(f'<line x1="{left}" y1="{py(level):.1f}" x2="{left + width}" '
                     f'y2="{py(level):.1f}" stroke="#eeeeee"/>')  # fmt: skip
        parts.append(_text(left - 6, py(level) + 4, shown, size=10, colour="#616161",
                           anchor="end"))  # fmt: skip
        level += step
    for size in sizes:
        label = f"{size / 1e6:g}M" if size >= 1_000_000 else f"{size / 1e3:g}k"
        parts.append(_text(px(size), top + height + 16, label, size=10, colour="#616161",
                           anchor="middle"))  # fmt: skip
    parts.append(_text(left + width / 2, top + height + 32, "rows (log scale)", size=10,
                       colour="#616161", anchor="middle"))  # fmt: skip
    for n, (name, points) in enumerate(series.items()):
        colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
        xy = [(px(int(r.rows)), py(found), r) for r in points
              if (found := value(r)) is not None]  # fmt: skip
        if len(xy) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2"/>')  # fmt: skip
        for x, y, r in xy:
            tip = f"{name}, {int(r.rows):,} rows: {r.rate or 0:,.0f} rows/s"
            if r.peak_rss_mb is not None:
                tip += f", peak RSS {r.peak_rss_mb:.1f} MB"
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                         f"<title>{escape(tip)}</title></circle>")  # fmt: skip
    return parts


def _growth_section(rows: list[Row], top: float, run: dict[str, Any]) -> tuple[list[str], float]:
    series = _growth_series(rows)
    if not series:
        return [], top
    parts = [_text(20, top + 18, "Growth: the same jobs at each size", size=16, weight="bold")]
    if run:
        measured = ", ".join(str(v) for v in (run.get("date"), run.get("command")) if v)
        parts.append(_text(20, top + 36, measured, size=11, colour="#616161"))
    base = {name: points[0].rate for name, points in series.items()}

    def relative(row: Row) -> float | None:
        first = base[str(row.growth["series"])] if row.growth else None
        return row.rate / first if row.rate and first else None

    panel_top, height = top + 76, 220
    width = (WIDTH - 100 - 80) / 2
    parts += _panel(series, left=70, top=panel_top, width=width, height=height,
                    title="throughput relative to the smallest size", value=relative,
                    unit=TIMES, band=(0.85, 1.15))  # fmt: skip
    parts += _panel(series, left=70 + width + 80, top=panel_top, width=width, height=height,
                    title="peak RSS of the job's process, MB",
                    value=lambda r: r.peak_rss_mb, unit="", band=None)  # fmt: skip
    legend_y = panel_top + height + 56
    x = 70.0
    for n, (name, points) in enumerate(series.items()):
        colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
        rates = ", ".join(f"{r.rate or 0:,.0f}" for r in points)
        label = f"{name} ({rates} rows/s)"
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="14" height="12" '
                     f'fill="{colour}"/>')  # fmt: skip
        parts.append(_text(x + 20, legend_y, label, size=11))
        legend_y += 18
    return parts, legend_y + 10


def render(
    rows: list[Row], run: dict[str, Any] | None = None, growth_run: dict[str, Any] | None = None
) -> str:
    """The whole picture as SVG text; `growth_run` describes the growth rows' run when they came
    from a file of their own."""
    run = run or {}
    title = "python -m bench"
    subtitle = ", ".join(
        str(part)
        for part in (
            run.get("date"),
            run.get("host"),
            f"{run['cpus']} CPUs" if run.get("cpus") else None,
            f"PostgreSQL {run['postgresql']}" if run.get("postgresql") else None,
            describe_size(run) or None,
        )
        if part
    )
    parts = [
        _text(20, 30, title, size=20, weight="bold"),
        _text(20, 50, subtitle or "(no run description)", size=12, colour="#616161"),
    ]
    ratio_parts, y = _ratio_section(rows, 64)
    growth_parts, y = _growth_section(rows, y + 10, growth_run or {})
    height = int(y + 20)
    body = "\n".join([*parts, *ratio_parts, *growth_parts])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">\n'
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>\n{body}\n</svg>\n'
    )


def write_svg(
    rows: list[Row],
    path: Path,
    run: dict[str, Any] | None = None,
    growth_run: dict[str, Any] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(rows, run, growth_run))
    tmp.replace(path)
