"""Generation speed of a causal LM: prefill tokens/s, decode tokens/s and per-token decode latency.

Measured the way a server generates: the prompt is prefilled once (one forward over all its tokens, filling the
KV cache), then tokens are decoded one at a time from the cache with greedy choice, each step timed on its own
(CUDA work is synchronized inside the clock). Each repeat starts from an empty cache; the first repeat is a
warm-up and is not counted.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_decode(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int = 64, repeats: int = 3
) -> dict[str, float]:
    """`prompt`: (1, P) token ids on the model's device. Returns tokens/s and decode P50/P95/P99 in ms."""
    device = prompt.device
    prefill_s: list[float] = []
    step_s: list[float] = []
    for repeat in range(repeats + 1):
        _synchronize(device)
        began = time.perf_counter()
        output = model(input_ids=prompt, use_cache=True)
        _synchronize(device)
        prefill = time.perf_counter() - began
        cache, token = output.past_key_values, output.logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(new_tokens):
            began = time.perf_counter()
            with warnings.catch_warnings():
                # transformers >= 5.2x renames `past_key_values` to `cache` with a FutureWarning on every call;
                # the old name is the one every supported release (the GPU machine's 5.17 too) accepts.
                warnings.simplefilter("ignore", FutureWarning)
                output = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = output.logits[:, -1:].argmax(-1)
            _synchronize(device)
            steps.append(time.perf_counter() - began)
            cache = output.past_key_values
        if repeat:  # repeat 0 warms up kernels and allocator
            prefill_s.append(prefill)
            step_s += steps
    steps_ms = np.asarray(step_s) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(steps_ms, [50, 95, 99]))
    return {
        "prefill_tokens_per_s": prompt.shape[1] * len(prefill_s) / sum(prefill_s),
        "decode_tokens_per_s": len(step_s) / sum(step_s),
        "decode_p50_ms": p50,
        "decode_p95_ms": p95,
        "decode_p99_ms": p99,
    }
