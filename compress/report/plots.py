"""The report's charts as inline SVG strings (matplotlib, no pyplot state, no files).

Only stages with latency figures are drawn; failed or not-evaluated stages live in the table alone.
matplotlib is imported inside the functions so that `import compress` stays light.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from compress.report.table import batch_sizes_of, latency_at, reference_stage
from compress.result import StageResult

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
UP, DOWN = "#2e8b57", "#c0392b"
RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def plain(text: str) -> str:
    """Stage names are user text: `$` would switch matplotlib to math mode."""
    return text.replace("$", r"\$")


def timed(stages: list[StageResult]) -> list[StageResult]:
    return [s for s in stages if s.latency and s.status != "not_evaluated"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(figure: Any) -> str:
    """The figure as an `<svg>` element ready to inline (no XML prolog, scales with its container)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)  # RDF boilerplate


def _metric_label(stages: list[StageResult]) -> str:
    first = next((s for s in stages if s.primary_metric), None)
    if first is None:
        return "primary metric"
    arrow = "higher is better" if first.higher_is_better else "lower is better"
    return f"{first.primary_metric} ({arrow})"


def accuracy_vs_latency(stages: list[StageResult]) -> str | None:
    """One panel per batch size: primary metric against P50 latency, each point labelled with its stage."""
    import matplotlib

    drawn = [s for s in timed(stages) if s.primary is not None]
    if not drawn:
        return None
    sizes = batch_sizes_of(drawn)
    with matplotlib.rc_context(RC):
        figure = _figure(min(4.2 * len(sizes), 12), 3.6)
        axes = figure.subplots(1, len(sizes), squeeze=False)[0]
        for ax, bs in zip(axes, sizes, strict=True):
            points = []
            for i, stage in enumerate(drawn):
                stats = latency_at(stage, bs)
                if stats is None:
                    continue
                ax.scatter(stats.p50_ms, stage.primary, color=COLORS[i % len(COLORS)], s=36, zorder=3)
                points.append((stats.p50_ms, float(stage.primary), plain(stage.name)))
            ax.set_xscale("log")
            ax.set_title(f"batch size {bs}")
            ax.set_xlabel("P50 latency per batch (ms, log scale)")
            ax.grid(alpha=0.3, which="both")
            ax.margins(x=0.25, y=0.15)
            _plain_log_ticks(ax.xaxis)
            _place_labels(ax, points)
        axes[0].set_ylabel(_metric_label(drawn))
        return to_svg(figure)


def _plain_log_ticks(axis: Any, suffix: str = "") -> None:
    """'2', '5', '10' instead of '10^0' and blank minor ticks: easier to read off a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}{suffix}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


# Label offsets tried in turn (points, horizontal alignment) until a label overlaps no earlier one.
LABEL_OFFSETS = [
    (5, 4, "left"),
    (5, -12, "left"),
    (-5, 4, "right"),
    (-5, -12, "right"),
    (5, 14, "left"),
    (5, -22, "left"),
    (-5, 14, "right"),
    (-5, -22, "right"),
]


def _place_labels(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Greedy label placement in display space, so stages with similar latency and metric stay legible."""
    ax.autoscale_view()
    to_pixels = ax.transData.transform
    dpi_scale = ax.figure.dpi / 72
    marker = 4 * dpi_scale  # the points themselves are obstacles too
    placed = [
        (px - marker, py - marker, px + marker, py + marker) for px, py in (to_pixels((x, y)) for x, y, _ in points)
    ]
    for x, y, text in sorted(points, key=lambda p: (p[0], p[1])):
        px, py = to_pixels((x, y))
        width, height = 5.2 * len(text) * dpi_scale, 9 * dpi_scale
        choice = LABEL_OFFSETS[0]
        for dx, dy, align in LABEL_OFFSETS:
            left = px + dx * dpi_scale - (width if align == "right" else 0)
            box = (left, py + dy * dpi_scale, left + width, py + dy * dpi_scale + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy, align)
                placed.append(box)
                break
        dx, dy, align = choice
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=align)


def latency_distribution(stages: list[StageResult]) -> str | None:
    """One panel per batch size: a bar from P50 to P99 per stage, with P50, P95 and P99 marked."""
    import matplotlib

    drawn = timed(stages)
    if not drawn:
        return None
    sizes = batch_sizes_of(drawn)
    with matplotlib.rc_context(RC):
        figure = _figure(min(4.2 * len(sizes), 12), 0.9 + 0.38 * len(drawn))
        axes = figure.subplots(1, len(sizes), squeeze=False, sharey=True)[0]
        positions = list(range(len(drawn)))[::-1]  # first stage on top
        for ax, bs in zip(axes, sizes, strict=True):
            for y, (i, stage) in zip(positions, enumerate(drawn), strict=True):
                stats = latency_at(stage, bs)
                if stats is None:
                    continue
                color = COLORS[i % len(COLORS)]
                ax.barh(y, stats.p99_ms - stats.p50_ms, left=stats.p50_ms, height=0.45, color=color, alpha=0.35)
                ax.plot([stats.p50_ms], [y], "o", color=color, label="P50" if i == 0 else None)
                ax.plot([stats.p95_ms], [y], "|", color="black", markersize=12, label="P95" if i == 0 else None)
                ax.plot([stats.p99_ms], [y], ">", color=color, label="P99" if i == 0 else None)
            ax.set_title(f"batch size {bs}")
            ax.set_xlabel("latency per batch (ms)")
            ax.set_xlim(left=0)
            ax.grid(alpha=0.3, axis="x")
        axes[0].set_yticks(positions, [plain(s.name) for s in drawn])
        axes[-1].legend(loc="lower right", fontsize=7, frameon=False)
        return to_svg(figure)


def _predecessor(stage: StageResult, index: int, drawn: list[StageResult]) -> StageResult | None:
    """The stage this one was made from if it was drawn, else the one drawn just before it."""
    by_name = {s.name: s for s in drawn[:index]}
    if stage.source in by_name:
        return by_name[stage.source]
    return drawn[index - 1] if index > 0 else None


def waterfall(stages: list[StageResult]) -> str | None:
    """Each stage's contribution: a floating bar from its source stage's value to its own.

    Top: throughput speedup over the reference at the largest batch size (log scale, so successive factors
    stack); bottom: the primary metric. Bars are labelled with the change the stage itself made.
    """
    import matplotlib

    drawn = timed(stages)
    reference = reference_stage(stages)
    if len(drawn) < 2 or reference is None or not reference.latency:
        return None
    bs = max(int(b) for b in reference.latency)
    drawn = [s for s in drawn if latency_at(s, bs) is not None]
    if len(drawn) < 2:
        return None
    base = latency_at(reference, bs).throughput_per_s
    speed = {s.name: latency_at(s, bs).throughput_per_s / base for s in drawn}
    with_metric = all(s.primary is not None for s in drawn)
    with matplotlib.rc_context(RC):
        figure = _figure(min(1.3 * len(drawn) + 2.5, 12), 6.0 if with_metric else 3.4)
        axes = figure.subplots(2 if with_metric else 1, 1, squeeze=False, sharex=True)[:, 0]
        x = list(range(len(drawn)))
        _waterfall_panel(axes[0], drawn, {s.name: speed[s.name] for s in drawn}, log=True)
        axes[0].set_ylabel(f"throughput vs {plain(reference.name)}\n(batch size {bs}, log scale)")
        _plain_log_ticks(axes[0].yaxis, suffix="×")
        axes[0].axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
        if with_metric:
            values = {s.name: float(s.primary) for s in drawn}
            higher = drawn[0].higher_is_better
            _waterfall_panel(axes[1], drawn, values, log=False, higher_is_better=higher)
            axes[1].set_ylabel(_metric_label(drawn))
        axes[-1].set_xticks(x, [plain(s.name) for s in drawn], rotation=20, ha="right")
        return to_svg(figure)


def _waterfall_panel(
    ax: Any, drawn: list[StageResult], values: dict[str, float], *, log: bool, higher_is_better: bool = True
) -> None:
    for i, stage in enumerate(drawn):
        before = _predecessor(stage, i, drawn)
        end = values[stage.name]
        start = values[before.name] if before is not None else (1.0 if log else end)
        if before is None:  # the first stage is the starting level: a thin marker bar
            ax.plot([i - 0.3, i + 0.3], [end, end], color="black", linewidth=2)
            ax.annotate(
                _level_text(end, log),
                (i, end),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
            continue
        better = (end >= start) if (log or higher_is_better) else (end <= start)
        low, high = sorted((start, end))
        if high == low:  # no change still deserves a visible tick
            ax.plot([i - 0.3, i + 0.3], [end, end], color="gray", linewidth=2)
        else:
            ax.bar(i, high - low, bottom=low, width=0.6, color=UP if better else DOWN, alpha=0.8)
        change = f"×{end / start:.2f}" if log else f"{end - start:+.{4 if abs(end) < 10 else 2}f}"
        ax.annotate(
            f"{change}\n(now {_level_text(end, log)})",
            (i, high),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    if log:
        ax.set_yscale("log")
        lows = [min(values.values()), 1.0]
        highs = [max(values.values()), 1.0]
        ax.set_ylim(min(lows) / 1.25, max(highs) * 1.6)
    else:
        spread = (max(values.values()) - min(values.values())) or abs(max(values.values())) * 0.05 or 1.0
        ax.set_ylim(min(values.values()) - 0.3 * spread, max(values.values()) + 0.5 * spread)
    ax.grid(alpha=0.3, axis="y", which="both")


def _level_text(value: float, log: bool) -> str:
    return f"{value:.2f}×" if log else (f"{value:.4f}" if math.fabs(value) < 10 else f"{value:.2f}")


def all_plots(stages: list[StageResult]) -> list[tuple[str, str, str]]:
    """(title, caption, svg) for every chart that has something to draw."""
    charts = [
        (
            "Quality vs. latency",
            "Primary metric against median latency per batch: the best trade-offs sit toward the top left "
            "(bottom left for lower-is-better metrics such as perplexity).",
            accuracy_vs_latency(stages),
        ),
        (
            "Latency distribution",
            "Bar from P50 to P99 per stage; the black tick is P95.",
            latency_distribution(stages),
        ),
        (
            "What each stage contributed",
            "Floating bars from the stage it was made from to its own value: "
            "green improved, red worsened. Speedup factors multiply along the chain.",
            waterfall(stages),
        ),
    ]
    return [(title, caption, svg) for title, caption, svg in charts if svg is not None]
