"""Bench charts as inline SVG: throughput against P99 latency, one line per machine × artifact × runtime × length
(points in batch-size order, labelled), the SLA limit as a vertical line and each line's SLA batch as a star."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from compress.bench.measure import Point
from compress.bench.run import BenchResults
from compress.report.plots import COLORS, plain, to_svg


def series_key(machine: str, point: Point) -> str:
    return f"{machine}: {point.artifact} [{point.runtime}/{point.device}, length {point.length}]"


def throughput_vs_p99(runs: Iterable[BenchResults]) -> str | None:
    from matplotlib.figure import Figure

    series: dict[str, list[Point]] = {}
    stars: dict[str, Point] = {}
    limits: set[float] = set()
    for run in runs:
        # The sweep's points and the SLA search's probes lie on one curve per series (one point per batch size).
        for point in [*run.points, *(probe for found in run.sla for probe in found.probes)]:
            line = series.setdefault(series_key(run.machine_name, point), [])
            if all(p.batch_size != point.batch_size for p in line):
                line.append(point)
        for found in run.sla:
            limits.add(found.sla_p99_ms)
            if found.best is not None:
                stars[series_key(run.machine_name, found.best)] = found.best
    if not series:
        return None
    figure = Figure(figsize=(10.0, 5.0), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(sorted(series.items())):
        points = sorted(points, key=lambda p: p.batch_size)
        color = COLORS[index % len(COLORS)]
        axes.plot([p.p99_ms for p in points], [p.throughput_per_s for p in points], "o-", color=color,
                  label=plain(name), markersize=4)  # fmt: skip
        for p in points:
            axes.annotate(str(p.batch_size), (p.p99_ms, p.throughput_per_s), textcoords="offset points",
                          xytext=(3, 3), fontsize=7, color=color)  # fmt: skip
        if name in stars:
            best = stars[name]
            axes.plot([best.p99_ms], [best.throughput_per_s], "*", color=color, markersize=13, markeredgecolor="k")
    for limit in sorted(limits):
        axes.axvline(limit, color="#c0392b", linestyle="--", linewidth=1)
        axes.annotate(f"SLA P99 {limit:g} ms", (limit, 1), xycoords=("data", "axes fraction"), rotation=90,
                      va="top", ha="right", fontsize=7, color="#c0392b")  # fmt: skip
    axes.set_xscale("log")
    return _finished(figure, axes, "P99 latency per batch (ms, log)", "throughput (samples/s, log)")


def latency_vs_load(runs: Iterable[BenchResults]) -> str | None:
    """Served load: P50 and P99 request latency against the offered rate, one colour per machine × artifact."""
    from matplotlib.figure import Figure

    series: dict[str, list] = {}
    for run in runs:
        for served in run.served:
            series.setdefault(f"{run.machine_name}: {served.artifact} [{served.runtime}]", []).append(served)
    if not series:
        return None
    figure = Figure(figsize=(10.0, 4.4), layout="constrained")
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(sorted(series.items())):
        points = sorted(points, key=lambda s: s.offered_per_s)
        color = COLORS[index % len(COLORS)]
        rates = [s.offered_per_s for s in points]
        axes.plot(rates, [s.p99_ms for s in points], "o-", color=color, label=plain(f"{name} P99"), markersize=4)
        axes.plot(rates, [s.p50_ms for s in points], "o:", color=color, label=plain(f"{name} P50"), markersize=3)
        for s in points:
            if s.saturated:
                axes.annotate("saturated", (s.offered_per_s, s.p99_ms), textcoords="offset points",
                              xytext=(3, -9), fontsize=7, color=color)  # fmt: skip
    axes.set_xscale("log")  # rates from a CPU's tens to a GPU's tens of thousands
    return _finished(figure, axes, "offered load (requests/s, Poisson arrivals, log)", "request latency (ms, log)")


def _finished(figure: Any, axes: Any, xlabel: str, ylabel: str) -> str:
    """Log y axis, labels, a light grid and the legend under the plot (beside it, a merged report's long series
    names squeezed the plot to a sliver); the figure grows with the legend. The figure as SVG."""
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.25)
    handles, labels = axes.get_legend_handles_labels()
    columns = 2 if len(labels) > 6 else 1
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + 0.16 * -(-len(labels) // columns))
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=7, frameon=False)
    return to_svg(figure)
