"""GPTQ's column loop: the torch loop against the Triton block kernel, on SmolLM2-135M's layer shapes (CUDA).

    python benchmarks/bench_gptq_kernel.py

One decoder layer's GPTQ problems as the `gptq` step sets them (q/k/v stacked, gate/up stacked, o, down) and, for
reference, the seven projections one by one; random weights, Hessians of correlated random inputs; W4 group 64
asymmetric. Then the whole `gptq` step (calibration replays included) on a randomly initialised model of
SmolLM2-135M's shape with 128 random 512-token windows. Writes benchmarks/results/gptq-kernel-gpu.json and
docs/benchmarks/gptq-kernel-gpu.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from compress.config import EvalSpec
from compress.environment import environment
from compress.io import atomic_write_text
from compress.quantize.gptq import gptq_quantize
from compress.quantize.scheme import QuantScheme
from compress.steps.base import StageContext
from compress.steps.quantize.gptq import GPTQ

REPO = Path(__file__).resolve().parent.parent
SCHEME = QuantScheme(bits=4, group_size=64, symmetric=False)
LAYERS = 30  # SmolLM2-135M
# (name, rows, columns): one layer's problems as the step stacks them, then the projections alone.
STACKED = [("q+k+v", 960, 576), ("o", 576, 576), ("gate+up", 3072, 576), ("down", 576, 1536)]
SEPARATE = [("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576)]
SEPARATE += [("gate", 1536, 576), ("up", 1536, 576), ("down", 576, 1536)]


def _hessian(columns: int, generator: torch.Generator) -> torch.Tensor:
    mix = torch.eye(columns) + 0.3 * torch.randn(columns, columns, generator=generator) / columns**0.5
    x = torch.randn(8192, columns, generator=generator) @ mix
    return (2 * x.t() @ x / x.shape[0]).cuda()


def _time(weight: torch.Tensor, hessian: torch.Tensor, kernel: str, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = gptq_quantize(weight, hessian, SCHEME, kernel=kernel)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


class _RandomWindows(GPTQ):
    """The `gptq` step fed random token windows: its time does not depend on what the tokens say."""

    def calibration_batches(self, model: Any, ctx: StageContext) -> list[torch.Tensor]:
        spec = self.config.calibration
        ids = torch.randint(0, model.model.config.vocab_size, (spec.samples, spec.seq_len), generator=_seeded())
        return list(ids.split(spec.batch_size))


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def time_step(device: str = "cuda", samples: int = 128, layers: int = LAYERS) -> dict[str, Any]:
    """The whole step on SmolLM2-135M's architecture (random weights), as the LLM benchmark runs it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.models.handle import ModelHandle

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    handle = ModelHandle(model=LlamaForCausalLM(config).eval(), tokenizer=None, task="causal-lm")

    def unused(*_: object) -> Any:
        raise AssertionError("not used")

    ctx = StageContext(
        train_data=unused,
        eval_data=unused,
        calibration_data=unused,
        score=unused,
        eval_spec=EvalSpec(),
        device=torch.device(device),
        work_dir=Path("/tmp"),
    )
    step = _RandomWindows(bits=4, group_size=64, calibration={"samples": samples, "seq_len": 512})
    step.progress = False
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    step.apply(handle, ctx)
    if cuda:
        torch.cuda.synchronize()
    return {
        "step_seconds": round(time.perf_counter() - started, 2),
        "step_peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "fp32_model_mb": round(sum(p.numel() for p in LlamaForCausalLM(config).parameters()) * 4 / 2**20),
    }


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    generator = torch.Generator().manual_seed(0)
    hessians = {columns: _hessian(columns, generator) for columns in (576, 1536)}
    gptq_quantize(torch.randn(64, 576).cuda(), hessians[576], SCHEME, kernel="triton")  # compile once
    rows = []
    for layout, problems in (("stacked", STACKED), ("separate", SEPARATE)):
        for name, out, columns in problems:
            weight = torch.randn(out, columns, generator=generator).cuda()
            torch_ms, (reference, reference_loss) = _time(weight, hessians[columns], "torch", 3)
            triton_ms, (fast, fast_loss) = _time(weight, hessians[columns], "triton", 5)
            rows.append(
                {
                    "layout": layout,
                    "problem": name,
                    "shape": [out, columns],
                    "torch_ms": round(torch_ms, 2),
                    "triton_ms": round(triton_ms, 2),
                    "speedup": round(torch_ms / triton_ms, 1),
                    "codes_equal_share": float((fast.values == reference.values).float().mean()),
                    "loss_rel_diff": abs(fast_loss - reference_loss) / reference_loss,
                }
            )
            print(rows[-1], flush=True)
    per_layer = {
        (layout, key): sum(r[key] for r in rows if r["layout"] == layout)
        for layout in ("stacked", "separate")
        for key in ("torch_ms", "triton_ms")
    }
    summary = {
        f"model_{layout}_{key.removesuffix('_ms')}_s": round(LAYERS * ms / 1000, 2)
        for (layout, key), ms in per_layer.items()
    }
    summary |= time_step()
    print(summary, flush=True)
    record = {
        "command": "python " + " ".join(sys.argv),
        "environment": environment(),
        "rows": rows,
        "summary": summary,
    }
    atomic_write_text(REPO / "benchmarks" / "results" / "gptq-kernel-gpu.json", json.dumps(record, indent=2) + "\n")
    lines = ["| layout | problem | shape | torch loop ms | Triton ms | speedup | codes equal |"]
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['problem']} | {r['shape'][0]}×{r['shape'][1]} | {r['torch_ms']:,.1f} "
            f"| {r['triton_ms']:,.2f} | {r['speedup']}x | {100 * r['codes_equal_share']:.3f} % |"
        )
    env = record["environment"]
    body = [
        "# gptq-kernel-gpu: GPTQ's column loop, torch against Triton, SmolLM2-135M layer shapes\n",
        f"Command: `{record['command']}`  ",
        f"GPU: {env['cuda']}, torch {env.get('torch')}, triton {env.get('triton', '?')}\n",
        "\n".join(lines),
        "\n## Summary\n",
        "`model_*`: x 30 layers, GPTQ's quantization alone; `step_*`: the whole `gptq` step (Triton kernel) on a "
        "random SmolLM2-135M-shaped model, 128 x 512 calibration tokens, peak of the GPU allocator.\n",
        "\n".join(f"- `{k}`: {v}" for k, v in summary.items()),
        "\nRaw figures: `benchmarks/results/gptq-kernel-gpu.json`.\n",
    ]
    atomic_write_text(REPO / "docs" / "benchmarks" / "gptq-kernel-gpu.md", "\n".join(body))


if __name__ == "__main__":
    main()
