"""Write report.json, report.md and report.html for a run, each atomically."""

from __future__ import annotations

from pathlib import Path

from compress.io import atomic_write_text
from compress.report.html import render_html
from compress.report.json import REPORT_JSON, render_json
from compress.report.markdown import render_markdown
from compress.result import RunReport


def write_reports(report: RunReport, out_dir: Path) -> dict[str, Path]:
    """Render all three first, so a rendering error leaves the previous reports untouched."""
    out_dir = Path(out_dir)
    rendered = {
        "json": (out_dir / REPORT_JSON, render_json(report)),
        "md": (out_dir / "report.md", render_markdown(report)),
        "html": (out_dir / "report.html", render_html(report)),
    }
    for path, text in rendered.values():
        atomic_write_text(path, text)
    return {kind: path for kind, (path, _) in rendered.items()}
