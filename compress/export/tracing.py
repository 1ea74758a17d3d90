"""What every exporter that traces the PyTorch model shares: inputs, the logits-only wrapper, limits, checks."""

from __future__ import annotations

import inspect

import torch

from compress.errors import ExportError
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext
from compress.tasks import get_task


def reject_torch_int8(model: ModelHandle, where: str, *, converter: str, fix: str) -> None:
    """Torch's dynamic-INT8 Linear kernels trace to packed params that no converter reads: say so, and how to
    get INT8 from the exporter itself instead."""
    quantized = any(t["name"] == "dynamic_int8" for t in model.transforms) or any(
        type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.model.modules()
    )
    if quantized:
        raise ExportError(
            f"the model went through the `dynamic_int8` step, whose quantized Linear kernels "
            f"(op quantized::linear_dynamic) {converter} cannot convert",
            where=where,
            fix=f"{fix}; export the FP32 model: drop the `dynamic_int8` step before this export, or set "
            "`source:` to the stage before it",
        )


def onnx_input_names(model: ModelHandle) -> list[str]:
    """Graph inputs: those the task feeds (input_ids, attention_mask; token_type_ids for classifiers whose
    tokenizer makes them) that the model's forward accepts."""
    accepted = inspect.signature(model.model.forward).parameters
    return [n for n in get_task(model.task).model_input_names(model.tokenizer) if n in accepted]


class LogitsOnly(torch.nn.Module):
    """Positional inputs in a fixed order and a single logits output, which is what an exported graph exposes.

    The task's export arguments go to every forward call (causal LMs: no KV cache, so the graph returns the
    logits of the whole sequence).
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], task: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.extra = dict(get_task(task).export_forward_kwargs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True)), **self.extra).logits


def example_inputs(model: ModelHandle, input_names: list[str]) -> tuple[torch.Tensor, ...]:
    """Two rows of different lengths, so the traced graph keeps the attention-mask path for padded batches."""
    texts = ["compress exports this model", "a longer second sentence, so the first row gets padding here"]
    encoded = model.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    if "token_type_ids" in input_names and "token_type_ids" not in encoded:
        encoded["token_type_ids"] = torch.zeros_like(encoded["input_ids"])
    return tuple(encoded[n].to(torch.int64) for n in input_names)


def inference_max_length(model: ModelHandle, ctx: StageContext) -> int:
    """The longest sequence the model will run on: the truncate step's limit or the eval's, within context."""
    limit = model.max_length or get_task(model.task).default_max_length(ctx.eval_spec)
    context = getattr(getattr(model.model, "config", None), "max_position_embeddings", None)
    return min(limit, context) if context else limit
