"""Causal language modelling: a decoder scored by perplexity over fixed windows of the joined split.

The reduction is per-window mean NLL computed on the model's device (`compress.evaluate.perplexity`). In
PyTorch the runtime hands over the final hidden states and the LM head rather than logits, whenever the head
alone reproduces the model's logits, so the reduction applies the head a chunk of positions at a time and the
(batch, seq, vocab) logits are never materialised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from compress.config import DataSpec, EvalSpec
from compress.data.text_data import TextData
from compress.evaluate.batching import Batch
from compress.evaluate.perplexity import make_windows, reduce_to_nll, window_batches
from compress.runtime.base import HiddenStates, Runtime, RuntimeOutput
from compress.tasks.base import DeploySample, EvalBatches, Fidelity, TaskAdapter, TorchForward

if TYPE_CHECKING:
    from compress.models.handle import ModelHandle
    from compress.result import LatencyStats

log = logging.getLogger(__name__)

# Tokens of the probe that checks head(final hidden states) == logits before the runtime relies on it.
_PROBE_TOKENS = 8
# Prompt length for the generation-speed measurement.
_PROMPT_TOKENS = 128


class CausalLM(TaskAdapter):
    """Next-token prediction; outputs are per-window mean NLL, the metric is perplexity."""

    name: ClassVar[str] = "causal-lm"
    metric_task: ClassVar[str] = "causal-lm"
    default_metric: ClassVar[str] = "perplexity"
    # Exported graphs have no KV cache: logits for the whole sequence, batch and sequence axes dynamic.
    export_forward_kwargs: ClassVar[dict[str, Any]] = {"use_cache": False}
    logits_axes: ClassVar[dict[int, str]] = {0: "batch", 1: "sequence"}

    @property
    def auto_class(self) -> type:
        return AutoModelForCausalLM

    def data_columns(self, spec: DataSpec, where: str) -> dict[str, str]:
        return {"text": spec.text}  # labels, if the file has any, are not read

    def eval_batches(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: TextData,
        spec: EvalSpec,
        max_length: int | None,
        batch_sizes: list[int],
    ) -> EvalBatches:
        """Whole windows of `evaluate.seq_len` tokens, capped by the model's limit; every window is full
        length, so batches need no padding and any batch size works."""
        context = max_length or spec.seq_len
        windows = make_windows(tokenizer, data, min(spec.seq_len, context), spec.stride)
        return EvalBatches(
            items=len(windows),
            targets=windows.token_counts,
            make=lambda batch_size: window_batches(windows, batch_size),
        )

    def reduce(self, outputs: RuntimeOutput, batch: Batch) -> np.ndarray:
        return reduce_to_nll(outputs, batch)

    def throughput_metrics(self, largest_batch: LatencyStats) -> dict[str, float]:
        return {"tokens_per_s": largest_batch.throughput_per_s * largest_batch.mean_tokens_per_sample}

    def generation_metrics(self, runtime: Runtime, data: TextData, spec: EvalSpec) -> dict[str, float]:
        """Prefill tokens/s, decode tokens/s and per-token decode P50/P95/P99 from the split's first tokens."""
        if spec.decode_tokens == 0:
            return {}
        ids = runtime.tokenizer("\n\n".join(data.texts[:200]), return_tensors="np", verbose=False)["input_ids"]
        return runtime.generation_speed(ids[:, :_PROMPT_TOKENS], spec.decode_tokens) or {}

    def fidelity(self, source: np.ndarray, outputs: np.ndarray) -> Fidelity:
        """Largest change of a window's mean NLL (nats per token); an LM has no single prediction to agree on."""
        if source.shape != outputs.shape:
            return Fidelity()
        return Fidelity(max_abs_diff=float(np.max(np.abs(source - outputs))) if outputs.size else 0.0)

    def torch_forward(self, model: torch.nn.Module) -> TorchForward:
        hidden = final_hidden_states_forward(model)
        if hidden is not None:
            return hidden
        log.info("%s: its LM head alone does not give its logits; scoring from full logits", type(model).__name__)
        return super().torch_forward(model)

    def default_max_length(self, spec: EvalSpec) -> int:
        return spec.seq_len

    def logits_width(self, config: PretrainedConfig) -> int:
        return int(config.vocab_size)

    def deploy_sample(self, model: ModelHandle) -> DeploySample:
        return DeploySample(
            texts='["The capital of France is"]',
            post="next_token = logits[0, -1].argmax()\nprint(tokenizer.decode([next_token]))",
        )


def final_hidden_states_forward(model: torch.nn.Module) -> TorchForward | None:
    """A forward that stops at the final hidden states and hands over the LM head, or None where that would
    not reproduce the model's logits.

    transformers' causal LMs compute `logits = lm_head(base_model(...)[0])`, but some scale or soft-cap the
    logits after the head (Cohere, Gemma 2) and remote code may do anything; so the split is checked on a
    short probe sequence against the full forward before it is used.
    """
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if base is None or base is model or not isinstance(head, torch.nn.Module):
        return None
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)

    def forward(inputs: dict[str, torch.Tensor]) -> HiddenStates:
        states = base(**inputs, use_cache=False)[0]
        return HiddenStates(states=states, head=head, width=vocab)

    try:
        device = next(model.parameters()).device
        probe = {"input_ids": (torch.arange(_PROBE_TOKENS, device=device) % max(vocab, 1))[None, :]}
        probe["attention_mask"] = torch.ones_like(probe["input_ids"])
        with torch.inference_mode():
            expected = model(**probe, use_cache=False).logits.float()
            split = forward(probe)
            got = split.logits().float()
    except Exception as exc:  # an architecture whose base model takes other arguments: use the logits
        log.debug("%s: no hidden-state forward (%s)", type(model).__name__, exc)
        return None
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or split.width != expected.shape[-1]:
        return None
    if float((got - expected).abs().max()) > 1e-3 * scale:
        return None
    return forward
