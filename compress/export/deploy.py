"""The deploy.md every export writes: how to load the artifact and run it, outside of compress.

A model evaluated on sentence pairs (`data.text_pair`) is served pairs too: its sample tokenizes a first and a
second text per row, as the evaluator did. The runner says so with `sample_inputs(pairs=True)` around the export,
so every exporter's sample follows without each exporter being told.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from compress.io import atomic_write_text
from compress.models.handle import ModelHandle
from compress.tasks import get_task

DEPLOY_FILE = "deploy.md"

# Example sentence pairs (first texts, second texts) for a pair model's sample; entailment-style, as in MRPC/RTE.
PAIR_FIRST = ["A man is playing a guitar on stage.", "The company reported higher profits this year."]
PAIR_SECOND = ["Someone is performing music.", "The firm lost money this year."]
PAIR_NOTE = (
    "This model reads sentence pairs: the tokenizer takes the first texts and, as `text_pair`, the second texts "
    "(one pair per row), exactly as it was evaluated."
)

_PAIRS: ContextVar[bool] = ContextVar("compress_deploy_pairs", default=False)


@contextlib.contextmanager
def sample_inputs(pairs: bool) -> Iterator[None]:
    """Within the block, deploy samples feed sentence pairs (`pairs=True`) or single texts."""
    token = _PAIRS.set(pairs)
    try:
        yield
    finally:
        _PAIRS.reset(token)


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
    notes = [*notes, PAIR_NOTE] if _PAIRS.get() else notes
    atomic_write_text(out_dir / DEPLOY_FILE, render_deploy_notes(title, code, notes, files))


def sample_io(model: ModelHandle, pairs: bool | None = None) -> tuple[str, str, int]:
    """Example inputs, the lines that turn logits into an answer (the task's), and the max_length, for a deploy
    sample.

    The inputs are the tokenizer's leading arguments as source text: a list of texts, or for a pair model
    (`pairs`; default: what `sample_inputs` set) the first texts and `text_pair=` the second ones.
    """
    sample = get_task(model.task).deploy_sample(model)
    texts = f"{PAIR_FIRST!r}, text_pair={PAIR_SECOND!r}" if (_PAIRS.get() if pairs is None else pairs) else sample.texts
    return texts, sample.post, model.max_length or 512
