"""Run reports: report.json (machine-readable), report.md (PRs, terminals), report.html (with charts)."""

from compress.report.json import read_report
from compress.report.markdown import stage_table
from compress.report.write import write_reports

__all__ = ["read_report", "stage_table", "write_reports"]
