"""report.json: the RunReport as written by pydantic, and reading it back with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from compress.errors import CompressError
from compress.result import RunReport

REPORT_JSON = "report.json"


def render_json(report: RunReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def read_report(path: Path) -> RunReport:
    """Load a report.json (or the report.json inside a run's output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    fix = "point at the report.json of a finished run, or run the recipe again to rewrite it"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompressError("report file not found", where=str(path), fix=fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read the report: {exc}", where=str(path), fix=fix) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompressError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", where=str(path), fix=fix
        ) from None
    try:
        return RunReport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise CompressError(
            f"not a compress report: {field}: {first['msg']} ({exc.error_count()} problem(s))",
            where=str(path),
            fix=fix,
        ) from None
