"""PyTorch → OpenVINO IR (openvino.convert_model), and NNCF INT8 / weight compression of the IR."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from compress.errors import ExportError
from compress.export.tracing import LogitsOnly, example_inputs, onnx_input_names, reject_torch_int8
from compress.models.handle import ModelHandle
from compress.optional import import_optional

WeightCompression = Literal["none", "int8", "int4_sym", "int4_asym"]
# Our names → nncf.CompressWeightsMode members (INT8_ASYM is NNCF's own default for 8-bit weights).
WEIGHT_MODES = {"int8": "INT8_ASYM", "int4_sym": "INT4_SYM", "int4_asym": "INT4_ASYM"}


def describe_conversion_failure(exc: Exception) -> str:
    """Name the op(s) OpenVINO's PyTorch frontend had no rule for, when its message lists them."""
    text = str(exc)
    unconverted = re.search(r"No conversion rule found for operations: ([^\n]+)", text)
    if unconverted:
        return f"the op(s) {unconverted.group(1).strip()}"
    ops = sorted(set(re.findall(r"\b(?:aten|prim|quantized|torchvision)::\w+", text)))
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the op(s) {', '.join(ops)}: {first_line}" if ops else f"the model: {first_line}"


def torch_to_openvino(model: ModelHandle, where: str) -> tuple[Any, list[str]]:
    """Trace the model into an ov.Model: dynamic (batch, sequence) int64 inputs, one `logits` output."""
    ov = import_optional("openvino", "openvino")
    reject_torch_int8(model, where, converter="OpenVINO", fix="set `quantize: int8` on the openvino export")
    input_names = onnx_input_names(model)
    module = model.model
    if next(module.parameters()).device.type != "cpu":  # trace on the CPU; the IR runs there anyway
        module = copy.deepcopy(module).cpu()
    was_training = module.training
    wrapper = LogitsOnly(module, input_names, model.task).eval()
    shapes = [(ov.PartialShape([-1, -1]), ov.Type.i64) for _ in input_names]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python bools in HF's mask code
            ov_model = ov.convert_model(wrapper, example_input=example_inputs(model, input_names), input=shapes)
    except Exception as exc:
        raise ExportError(
            f"OpenVINO could not convert {describe_conversion_failure(exc)} (stage: torch → OpenVINO IR)",
            where=where,
            fix="remove the step that introduced this op before the export, or export to ONNX instead",
        ) from exc
    finally:
        module.train(was_training)
    # The traced graph names inputs after TorchScript values (input.1, …): give them the tokenizer's names.
    for port, name in zip(ov_model.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    return ov_model, input_names


def quantize_int8(
    ov_model: Any, feeds: list[Mapping[str, np.ndarray]], *, transformer: bool, fast_bias_correction: bool
) -> Any:
    """NNCF post-training INT8 (weights and activations), calibrated on `feeds` (one batch per item)."""
    nncf = import_optional("nncf", "openvino")
    return nncf.quantize(
        ov_model,
        nncf.Dataset(list(feeds)),
        subset_size=len(feeds),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        fast_bias_correction=fast_bias_correction,
    )


def compress_weights(ov_model: Any, mode: WeightCompression, *, group_size: int, ratio: float) -> Any:
    """NNCF data-free weight compression: INT8 per channel, or grouped INT4 (`ratio` of layers, rest INT8)."""
    nncf = import_optional("nncf", "openvino")
    weight_mode = getattr(nncf.CompressWeightsMode, WEIGHT_MODES[mode])
    if mode == "int8":
        return nncf.compress_weights(ov_model, mode=weight_mode)
    return nncf.compress_weights(ov_model, mode=weight_mode, group_size=group_size, ratio=ratio)
