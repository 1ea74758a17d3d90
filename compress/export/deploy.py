"""The deploy.md every export writes: how to load the artifact and run it, outside of compress."""

from __future__ import annotations

from pathlib import Path

from compress.io import atomic_write_text
from compress.models.handle import ModelHandle
from compress.tasks import get_task

DEPLOY_FILE = "deploy.md"


def list_artifact_files(out_dir: Path) -> list[str]:
    """Files already in the artifact folder (relative paths, sorted), for the notes' file list."""
    return sorted(str(p.relative_to(out_dir)) for p in Path(out_dir).rglob("*") if p.is_file())


def render_deploy_notes(title: str, code: str, notes: list[str], files: list[str]) -> str:
    lines = [f"# {title}", ""]
    if files:
        lines += ["## Files", ""] + [f"- `{name}`" for name in files] + [""]
    lines += ["## Run it", "", "```python", code.strip("\n"), "```", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def write_deploy_notes(out_dir: Path, title: str, code: str, notes: list[str]) -> None:
    """Write `out_dir/deploy.md`: the artifact's files, a runnable Python sample and deployment notes.

    Call it last in `export`, so the file list shows everything the artifact holds.
    """
    out_dir = Path(out_dir)
    files = [f for f in list_artifact_files(out_dir) if f != DEPLOY_FILE]
    atomic_write_text(out_dir / DEPLOY_FILE, render_deploy_notes(title, code, notes, files))


def sample_io(model: ModelHandle) -> tuple[str, str, int]:
    """Example input texts, the lines that turn logits into an answer (the task's), and the max_length, for a
    deploy sample."""
    sample = get_task(model.task).deploy_sample(model)
    return sample.texts, sample.post, model.max_length or 512
