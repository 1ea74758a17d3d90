"""The command line: user errors print a message and exit 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_unknown_step_is_a_clean_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {source: m}\ndata: {path: d.tsv}\nsteps: [truncat]\n")
    proc = run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "steps[0]" in proc.stderr and "truncate" in proc.stderr
    assert not (tmp_path / "out").exists()  # rejected before any work started


def test_missing_data_file_is_a_clean_error(tmp_path, tiny_bert):
    tiny_bert.model.save_pretrained(tmp_path / "m")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "m")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{source: {tmp_path / 'm'}}}\ndata: {{path: missing.tsv, text: sentence}}\nsteps: [dynamic_int8]\n"
    )
    proc = run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "missing.tsv" in proc.stderr


def test_list_shows_builtins():
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in (
        "finetune",
        "truncate",
        "dynamic_int8",
        "distill",
        "onnx",
        "openvino",
        "tensorrt",
        "coreml",
        "accuracy",
        "perplexity",
        "text-classification",
        "causal-lm",
    ):
        assert name in proc.stdout
    assert "tasks:" in proc.stdout


def test_reference_doc_is_up_to_date():
    from compress.reference import render_reference

    committed = (REPO / "docs" / "reference.md").read_text()
    assert committed == render_reference(), "docs/reference.md is stale: run `compress docs`"


def test_usage_error_has_no_traceback():
    proc = run_cli("run", "recipes/sst2-minilm-int8.yaml", "--no-such-option")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "No such option" in proc.stderr


def test_eval_one_model_without_steps(tmp_path, tiny_bert):
    tiny_bert.model.save_pretrained(tmp_path / "m")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "m")
    proc = run_cli(
        "eval",
        str(tmp_path / "m"),
        "--data",
        "evals/data/sst2/dev.tsv",
        "--text",
        "sentence",
        "--limit",
        "16",
        "--batch-size",
        "4",
        "--output",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout and (tmp_path / "out" / "report.json").exists()


def test_eval_a_causal_lm_defaults_to_perplexity_at_any_batch_size(tmp_path, tiny_llama):
    import json

    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join((REPO / "evals/data/wikitext-2-raw/wiki.test.raw").read_text().splitlines()[:30]))
    proc = run_cli(
        "eval", str(tmp_path / "m"), "--data", str(text), "--task", "causal-lm", "--batch-size", "1",
        "--batch-size", "2", "--output", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (baseline,) = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]
    assert baseline["primary_metric"] == "perplexity" and set(baseline["latency"]) == {"1", "2"}


def test_eval_names_an_unknown_task(tmp_path):
    proc = run_cli("eval", "m", "--data", "d.txt", "--task", "causal_lm", "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--task: unknown task 'causal_lm' (did you mean 'causal-lm'?)" in proc.stderr


def test_eval_an_exported_artifact_measures_it_in_its_own_runtime(tmp_path, tiny_bert, sst2_dev):
    """An export made elsewhere (a GPU host) gets this machine's accuracy and speed, scored like a recipe stage."""
    import json

    import numpy as np
    from train_helpers import make_context

    from compress.artifacts import open_artifact
    from compress.evaluate.batching import tokenize_batches
    from compress.export.onnx import OnnxExporter

    folder = tmp_path / "onnx"
    folder.mkdir()
    (tmp_path / "work").mkdir()
    OnnxExporter(quantize="dynamic").export(tiny_bert, make_context(sst2_dev, sst2_dev, tmp_path / "work"), folder)
    proc = run_cli(
        "eval", str(folder), "--data", "evals/data/sst2/dev.tsv", "--text", "sentence", "--limit", "24",
        "--batch-size", "1", "--batch-size", "8", "--threads", "1", "--output", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out" / "eval.json").read_text())
    evaluation = record["evaluation"]
    assert record["format"] == "onnx" and evaluation["runtime"] == "onnxruntime" and evaluation["threads"] == 1
    assert set(evaluation["latency"]) == {"1", "8"} and evaluation["eval_samples"] == 24
    runtime = open_artifact(folder, threads=1)
    predicted = np.concatenate([runtime.predict(b.inputs).argmax(-1) for b in tokenize_batches(
        runtime.tokenizer, sst2_dev.head(24), 8, 128)])  # fmt: skip
    expected = float(np.mean(predicted == np.asarray(sst2_dev.head(24).labels)))
    assert evaluation["metrics"]["accuracy"] == expected
    assert "accuracy" in proc.stdout and "| 8 |" in proc.stdout


def test_a_saved_stage_is_measured_here_like_an_export(tmp_path, tiny_bert, sst2_dev):
    """A stage folder trained elsewhere (`bench_distill.py --evaluate-here` measures teachers this way) opens as a
    `pytorch` artifact: its accuracy is the model's own and the record names the format."""
    import json

    import numpy as np

    from compress.config import DataSpec, EvalSpec
    from compress.evaluate.artifact import evaluate_artifact
    from compress.evaluate.batching import tokenize_batches
    from compress.models.serialize import save_handle
    from compress.runtime.torch import TorchRuntime

    save_handle(tiny_bert, tmp_path / "model")
    data = DataSpec(path=str(REPO / "evals/data/sst2/dev.tsv"), text="sentence", limit=16)
    evaluation = evaluate_artifact(tmp_path / "model", data, EvalSpec(batch_sizes=[8], threads=1), REPO,
                                   tmp_path / "out", progress=False)  # fmt: skip
    record = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert record["format"] == "pytorch" and evaluation.runtime == "pytorch" and set(evaluation.latency) == {"8"}
    runtime = TorchRuntime(tiny_bert)
    predicted = np.concatenate([runtime.predict(b.inputs).numpy().argmax(-1) for b in tokenize_batches(
        runtime.tokenizer, sst2_dev.head(16), 8, 128)])  # fmt: skip
    assert evaluation.metrics["accuracy"] == float(np.mean(predicted == np.asarray(sst2_dev.head(16).labels)))
