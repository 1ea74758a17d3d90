"""PyTorch → Core ML ML Program (.mlpackage) via TorchScript, plus coremltools.optimize weight compression."""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any, Literal

import numpy as np
import torch

from compress.errors import ExportError
from compress.export.coreml_ops import patched_torch_frontend
from compress.export.tracing import LogitsOnly, example_inputs, onnx_input_names, reject_torch_int8
from compress.models.handle import ModelHandle
from compress.optional import import_optional

WeightQuantization = Literal["none", "int8", "palettize4", "palettize8"]
ComputeUnits = Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"]
DeploymentTarget = Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"]
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}


def trace(model: ModelHandle, where: str) -> tuple[torch.jit.ScriptModule, list[str]]:
    """TorchScript of the logits-only wrapper, traced on a padded batch so the attention-mask path is kept."""
    reject_torch_int8(
        model,
        where,
        converter="coremltools",
        fix="set `weight_quantization: int8` (or a palettization) on the coreml export",
    )
    input_names = onnx_input_names(model)
    module = model.model
    if next(module.parameters()).device.type != "cpu":  # trace on the CPU; Core ML gets weights as constants
        module = copy.deepcopy(module).cpu()
    was_training = module.training
    wrapper = LogitsOnly(module, input_names, model.task).eval()
    inputs = example_inputs(model, input_names)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python bools in HF's mask code
            traced = torch.jit.trace(wrapper, inputs, strict=False)
            faithful = trace_is_faithful(wrapper, traced, model, input_names)
    except Exception as exc:
        raise ExportError(
            f"torch.jit.trace failed: {str(exc).strip().splitlines()[0]} (stage: torch → TorchScript)",
            where=where,
            fix="Core ML conversion needs a traceable model; remove the step that made it untraceable",
        ) from exc
    finally:
        module.train(was_training)
    if not faithful:
        raise ExportError(
            "the TorchScript trace does not reproduce the model on a batch of another shape (stage: torch → "
            "TorchScript): the model's code branches on input values or shapes",
            where=where,
            fix="Core ML needs a model whose forward pass is the same for every input shape",
        )
    return traced, input_names


def trace_is_faithful(wrapper: torch.nn.Module, traced: torch.jit.ScriptModule, model: ModelHandle,
                      input_names: list[str]) -> bool:  # fmt: skip
    """Whether the trace reproduces eager logits on a batch of another shape (else shapes were baked in)."""
    texts = ["one", "two rows of another length", "and a third, so batch and sequence both change"]
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    if "token_type_ids" in input_names and "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    inputs = tuple(enc[n].to(torch.int64) for n in input_names)
    return torch.allclose(traced(*inputs), wrapper(*inputs), atol=1e-4, rtol=1e-4)


def to_mlprogram(
    traced: torch.jit.ScriptModule,
    input_names: list[str],
    *,
    max_batch_size: int,
    max_length: int,
    precision: Literal["fp32", "fp16"],
    compute_units: ComputeUnits,
    target: DeploymentTarget,
    where: str,
) -> Any:
    """ct.convert: int32 inputs of flexible shape (1…max_batch_size, 1…max_length), one `logits` output."""
    ct = import_optional("coremltools", "coreml")
    shape = (
        ct.RangeDim(1, max_batch_size, default=1),
        ct.RangeDim(1, max_length, default=min(8, max_length)),
    )
    try:
        with patched_torch_frontend(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ct.convert(
                traced,
                inputs=[ct.TensorType(name=n, shape=shape, dtype=np.int32) for n in input_names],
                outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]),
                minimum_deployment_target=getattr(ct.target, target),
                skip_model_load=True,  # loading needs the macOS Core ML framework; validated from the spec
            )
    except Exception as exc:
        raise ExportError(
            f"coremltools could not convert {describe_failure(exc)} (stage: TorchScript → Core ML MIL)",
            where=where,
            fix="remove the step that introduced this op, or register a converter for it with "
            "coremltools.converters.mil.frontend.torch.register_torch_op",
        ) from exc


def describe_failure(exc: Exception) -> str:
    """Name the op when coremltools says which one it could not convert."""
    text = str(exc)
    match = re.search(r"convert function for op '([\w:.]+)' not implemented", text)
    if match:
        return f"the op '{match.group(1)}': no converter for it in coremltools"
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the model: {first_line}"


def compress_weights(mlmodel: Any, mode: WeightQuantization, *, weight_threshold: int) -> Any:
    """coremltools.optimize: int8 linear weights (per channel) or k-means palettization (per tensor)."""
    import_optional("coremltools", "coreml")
    import coremltools.optimize.coreml as cto

    if mode == "int8":
        op_config: Any = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_channel",
            weight_threshold=weight_threshold,
        )
        optimize = cto.linear_quantize_weights
    else:
        nbits = 4 if mode == "palettize4" else 8
        op_config = cto.OpPalettizerConfig(
            nbits=nbits, mode="kmeans", granularity="per_tensor", weight_threshold=weight_threshold
        )
        optimize = cto.palettize_weights
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # all-zero weight rows make 0/0 scales that coremltools then fixes
        return optimize(mlmodel, cto.OptimizationConfig(global_config=op_config))
