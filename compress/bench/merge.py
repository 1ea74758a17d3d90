"""Bench results files → one report across machines: `bench.json` (the runs, as read), `bench.md` and
`bench.html` (machine identities, every point, the SLA batches, served load, what could not run where; the HTML
with throughput-against-P99 and latency-against-load charts)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from pydantic import ValidationError

from compress.bench.plots import latency_vs_load, throughput_vs_p99
from compress.bench.run import SCHEMA_VERSION, BenchResults
from compress.errors import ConfigError
from compress.io import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1d2330; padding: 0 1rem; }
table { border-collapse: collapse; margin: .6rem 0 1.6rem; font-size: .85rem; }
th, td { border-bottom: 1px solid #e3e6ec; padding: .3rem .55rem; text-align: left; }
th { background: #f3f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #4d5566; font-size: .85rem; } figure svg { max-width: 100%; height: auto; }
"""


def read_runs(path: Path) -> list[BenchResults]:
    """The runs in a bench.json: one machine's, or several from an earlier merge (merges compose)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: not a readable JSON file ({exc})", where=str(path), fix="give a bench.json"
        ) from None
    runs = raw.get("runs") if isinstance(raw, dict) else None
    if not isinstance(runs, list):
        raise ConfigError(f"{path}: no `runs` list", where=str(path), fix="give a bench.json that compress bench wrote")
    return [_validated(run, path) for run in runs]


def _validated(raw: object, path: Path) -> BenchResults:
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: bench results schema version {version!r}, this compress reads {SCHEMA_VERSION}",
            where=str(path),
            fix="re-run `compress bench` with this version of compress on that machine",
        )
    try:
        return BenchResults.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"{path}: {field}: {first['msg']}", where=str(path), fix="give a file `compress bench` wrote"
        ) from None


def load_runs(paths: list[Path]) -> list[BenchResults]:
    return [run for path in paths for run in read_runs(path)]


def machine_line(run: BenchResults) -> str:
    m = run.machine
    gpu = f", GPU {m['cuda']} (driver {m.get('gpu_driver') or '?'})" if m.get("cuda") else ""
    flags = ", ".join(m.get("cpu_flags") or []) or "none of avx2/avx512/vnni/amx"
    versions = ", ".join(f"{lib} {m[lib]}" for lib in ("torch", "onnxruntime", "openvino", "coremltools", "tensorrt")
                         if m.get(lib))  # fmt: skip
    return f"{m.get('cpu')} ({m.get('cpu_count')} cores; {flags}){gpu}; {m.get('platform')}; {versions}"


def tables(runs: list[BenchResults]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Section title → (headers, rows): what both the Markdown and the HTML report show."""
    points = [
        [run.machine_name, p.artifact, f"{p.runtime}/{p.device}", p.precision or "—", str(p.batch_size), p.length,
         f"{p.p50_ms:.2f}", f"{p.p95_ms:.2f}", f"{p.p99_ms:.2f}" + (" *" if p.p99_from_few_samples else ""),
         f"{p.throughput_per_s:,.1f}", f"{p.throughput_spread:.1%}", f"{p.tokenize_ms_per_batch:.2f}",
         "—" if p.peak_memory_mb is None else f"{p.peak_memory_mb:,.0f}", str(p.batches)]
        for run in runs for p in run.points
    ]  # fmt: skip
    sla = [
        [run.machine_name, s.artifact, s.runtime, s.length, f"{s.sla_p99_ms:g}",
         "missed" if s.best is None else str(s.best.batch_size),
         "—" if s.best is None else f"{s.best.throughput_per_s:,.1f}",
         "—" if s.best is None else f"{s.best.p99_ms:.2f}", "yes" if s.limited_by_max_batch else "no"]
        for run in runs for s in run.sla
    ]  # fmt: skip
    served = [
        [run.machine_name, s.artifact, s.runtime, f"{s.offered_per_s:g}", f"{s.achieved_per_s:,.1f}",
         f"{s.window_ms:g}", f"{s.mean_batch:.1f}", f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}",
         "yes" if s.saturated else "no"]
        for run in runs for s in run.served
    ]  # fmt: skip
    unavailable = [[run.machine_name, u.artifact, u.format or "—", u.reason] for run in runs for u in run.unavailable]
    unavailable += [[run.machine_name, label, "—", "not measured: that machine's bench stopped before it"]
                    for run in runs for label in run.not_measured]  # fmt: skip
    return {
        "Measured points": (
            ["machine", "artifact", "runtime", "precision", "batch", "length", "P50 ms", "P95 ms", "P99 ms",
             "samples/s", "spread", "tokenize ms", "peak MB", "batches"],
            points,
        ),
        "Largest throughput within the SLA": (
            ["machine", "artifact", "runtime", "length", "SLA P99 ms", "batch", "samples/s", "P99 ms",
             "limited by max batch"],
            sla,
        ),
        "Served load (Poisson arrivals, dynamic batching)": (
            ["machine", "artifact", "runtime", "offered/s", "served/s", "window ms", "mean batch", "P50 ms",
             "P99 ms", "saturated"],
            served,
        ),
        "Not available on that machine": (["machine", "artifact", "format", "reason"], unavailable),
    }  # fmt: skip


FOOTNOTE = (
    "* P99 from fewer than 1,000 batches (MLPerf LoadGen's minimum for a 99th percentile): read it as a maximum. "
    "Spread: (max − min) / median throughput over the repeated passes."
)


def markdown(runs: list[BenchResults]) -> str:
    lines = ["# compress bench\n", "## Machines\n"]
    lines += [f"- **{run.machine_name}**: {machine_line(run)}  \n  `{run.command}` ({run.created})" for run in runs]
    for title, (headers, rows) in tables(runs).items():
        if not rows:
            continue
        lines += [f"\n## {title}\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines.append(f"\n{FOOTNOTE}\n")
    return "\n".join(lines)


def html(runs: list[BenchResults]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>compress bench</title><style>{CSS}</style>"
             "</head><body><h1>compress bench</h1><h2>Machines</h2><ul>"]  # fmt: skip
    parts += [f"<li><b>{escape(r.machine_name)}</b>: {escape(machine_line(r))}<br><code>{escape(r.command)}</code></li>"
              for r in runs]  # fmt: skip
    parts.append("</ul>")
    for title, svg, caption in (
        ("Throughput against P99", throughput_vs_p99(runs), "Points in batch-size order (labels); ★ the SLA batch."),
        ("Latency against offered load", latency_vs_load(runs), "One server worker, dynamic batching."),
    ):
        if svg:  # matplotlib XML-escapes every text it draws
            parts.append(f"<figure><h2>{title}</h2>{svg}<figcaption class='note'>{caption}</figcaption></figure>")
    for title, (headers, rows) in tables(runs).items():
        if not rows:
            continue
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td class='num'>{escape(c)}</td>" if c[:1].isdigit() else f"<td>{escape(c)}</td>"
                             for c in row) + "</tr>"
            for row in rows
        )  # fmt: skip
        parts.append(f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>")
    parts.append(f"<p class='note'>{escape(FOOTNOTE)}</p></body></html>")
    return "".join(parts)


def _results_json(runs: list[BenchResults]) -> str:
    return json.dumps({"runs": [r.model_dump(mode="json") for r in runs]}, indent=2) + "\n"


def write_results(results: BenchResults, out_dir: Path) -> Path:
    """Only bench.json (what `merge` reads): cheap enough to rewrite after every artifact."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "bench.json", _results_json([results]))
    return out_dir / "bench.json"


def write_report(runs: list[BenchResults], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "bench.json": _results_json(runs),
        "bench.md": markdown(runs),
        "bench.html": html(runs),
    }
    for name, text in written.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in written]
