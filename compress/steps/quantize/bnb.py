"""`bnb`: bitsandbytes weight quantization through transformers' `BitsAndBytesConfig` — LLM.int8 (int8 weights,
outlier input columns in fp16) or 4-bit NF4 / FP4 with optional double quantization of the scales.

transformers applies bitsandbytes while it loads weights, so the step hands the incoming model's own tensors to
`from_pretrained(None, state_dict=..., quantization_config=...)` on the target device: no copy on disk, and the
result is exactly what transformers would build from a saved float checkpoint. The checkpoint is transformers'
own bitsandbytes layout (`save_pretrained`), which `from_pretrained` reloads into the same layers.
"""

from __future__ import annotations

import copy
import importlib
import logging
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from compress.errors import ConfigError, MissingExtra
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig

Mode = Literal["int8", "nf4", "fp4"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Fields that only mean something in one mode: setting one in the other mode is an error, not silently ignored.
INT8_ONLY = ("llm_int8_threshold",)
FOUR_BIT_ONLY = ("double_quant", "compute_dtype")
INSTALL = 'pip install "compress[bnb]"  (bitsandbytes==0.50.2)'


class BnbConfig(StepConfig):
    """bitsandbytes quantization of every Linear but `ignore`: LLM.int8, NF4 or FP4."""

    mode: Mode = Field(
        "int8",
        description="`int8`: LLM.int8 (int8 weights per output row, int8 activations per token, outlier input "
        "columns in fp16); `nf4` / `fp4`: 4-bit weights in blocks of 64, NormalFloat or float code.",
    )
    llm_int8_threshold: float = Field(
        6.0,
        ge=0,
        description="int8: activations at or above this magnitude make their input column an fp16 outlier "
        "(the paper's 6.0); 0 quantizes every column.",
    )
    double_quant: bool = Field(
        True, description="4-bit: quantize the per-block scales too (8-bit, blocks of 256): ~0.4 bit less per weight."
    )
    compute_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="4-bit: dtype the weights are dequantized to for the matmul; `auto`: the model's dtype "
        "(closest to the float model; on a GPU, bfloat16 is faster for a float32 model).",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Modules kept in full precision (transformers' `llm_int8_skip_modules`: a module name or "
        "prefix, a regex matched from the start of the name, or a name suffix); the head by default.",
    )

    @model_validator(mode="after")
    def _fields_of_the_mode(self) -> BnbConfig:
        other = FOUR_BIT_ONLY if self.mode == "int8" else INT8_ONLY
        stray = [name for name in other if name in self.model_fields_set]
        if stray:
            needs = "mode nf4 or fp4" if self.mode == "int8" else "mode int8"
            raise ValueError(f"{', '.join(stray)} only applies with {needs}, not with mode {self.mode}: remove it")
        return self


class BitsAndBytes(Step):
    """bitsandbytes LLM.int8 / NF4 / FP4 quantization of a transformers model, in transformers' own format."""

    name: ClassVar[str] = "bnb"
    Config = BnbConfig
    config: BnbConfig
    evaluate_saved: ClassVar[bool] = True  # judged after save → reload of its bitsandbytes checkpoint

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        cfg = self.config
        bnb = require_bitsandbytes(self.name)
        network = _check_quantizable(model, self.name)
        dtype = _float_dtype(network)
        compute = dtype if cfg.compute_dtype == "auto" else DTYPES[cfg.compute_dtype]
        planned = _convertible_linears(network, cfg.ignore, self.name)
        check_device(bnb, ctx.device, cfg, compute, dtype, self.name)
        quiet_int8_cast_warning()
        started = time.perf_counter()
        quantized = type(network).from_pretrained(
            None,
            config=copy.deepcopy(network.config),  # from_pretrained writes quantization_config into it
            state_dict=network.state_dict(),  # the same tensors, not a copy: tied weights stay one tensor
            quantization_config=self.transformers_config(compute),
            dtype=dtype,
            device_map={"": str(ctx.device)},
        )
        quantized.eval()
        # Loading from a state dict reads no generation_config.json: keep the model's (e.g. its EOS tokens).
        quantized.generation_config = copy.deepcopy(network.generation_config)
        layers = bnb.nn.Linear8bitLt if cfg.mode == "int8" else bnb.nn.Linear4bit
        count = sum(isinstance(m, layers) for m in quantized.modules())
        if count != len(planned):  # transformers' rule and ours disagree: a bug, not a user error
            raise RuntimeError(f"bnb: expected {len(planned)} quantized Linear layers, transformers made {count}")
        # The handle is transformed in place, like every step's: dropping the float module frees its weights now
        # rather than when the runner lets go of the input (a 7B model would otherwise sit twice in memory).
        model.model = quantized
        self._details = {
            "mode": cfg.mode,
            "quantized_modules": count,
            "quantize_seconds": round(time.perf_counter() - started, 2),
            "bitsandbytes_version": bnb.__version__,
        }
        if cfg.mode != "int8":
            self._details.update(double_quant=cfg.double_quant, compute_dtype=str(compute).removeprefix("torch."))
        return model

    def transformers_config(self, compute: torch.dtype) -> Any:
        """transformers' BitsAndBytesConfig for this step (it is what config.json's quantization_config holds)."""
        from transformers import BitsAndBytesConfig as HFBitsAndBytesConfig

        cfg = self.config
        if cfg.mode == "int8":
            return HFBitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=cfg.llm_int8_threshold, llm_int8_skip_modules=list(cfg.ignore)
            )
        return HFBitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.mode,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=list(cfg.ignore),  # transformers uses this list for 4-bit too
        )


def require_bitsandbytes(where: str | None) -> ModuleType:
    """Import bitsandbytes, or raise MissingExtra naming the extra to install."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise MissingExtra(
            f"bitsandbytes quantization needs the bitsandbytes package, which is not importable ({exc})",
            where=where,
            fix=INSTALL,
        ) from exc


def check_device(
    bnb: ModuleType,
    device: torch.device,
    config: BnbConfig,
    compute: torch.dtype,
    dtype: torch.dtype,
    where: str,
) -> None:
    """Quantize and run one 64 x 64 layer of the requested kind on `device`, before any work.

    Which devices and modes work depends on the installed build (its compiled backends, the CUDA version it
    was built for), not on a fixed list, so the only reliable check is to try: a few milliseconds.
    """
    mode = config.mode
    four_bit_fix = "use `mode: int8`, or run on a CUDA GPU (evaluate.device: cuda)"
    int8_fix = "run on CPU or a CUDA GPU (evaluate.device), or install a bitsandbytes build for this device"
    supported = getattr(bnb, "supported_torch_devices", None)
    if supported is not None and device.type not in supported:
        raise ConfigError(
            f"bitsandbytes {bnb.__version__} does not support the device '{device.type}' "
            f"(it supports {', '.join(sorted(supported))})",
            where=f"{where}.mode" if mode != "int8" else "evaluate.device",
            fix=four_bit_fix if mode != "int8" else int8_fix,
        )
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, generator=generator) / 8
    inputs = torch.randn(4, 64, generator=generator)
    try:
        if mode == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=config.llm_int8_threshold)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                64, 64, bias=False, compute_dtype=compute, compress_statistics=config.double_quant, quant_type=mode
            )
            layer.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, compress_statistics=config.double_quant, quant_type=mode
            )
        quiet_int8_cast_warning()
        with torch.no_grad():
            layer = layer.to(device).eval()  # moving the layer is what quantizes its weight
            output = layer(inputs.to(device, dtype)).float().cpu()
    except Exception as exc:  # whatever the build raises (RuntimeError, NotImplementedError, a missing library)
        raise ConfigError(
            f"bitsandbytes {bnb.__version__} cannot run mode '{mode}' on {device}: {type(exc).__name__}: {exc}",
            where=f"{where}.mode" if mode != "int8" else "evaluate.device",
            fix=four_bit_fix if mode != "int8" else int8_fix,
        ) from exc
    expected = inputs @ weight.T
    error = float((output - expected).norm() / expected.norm())
    # 4-bit codes cost ~10 % of the output's norm on random weights, int8 ~1 %: far more is a broken kernel.
    if not error < 0.5:
        raise ConfigError(
            f"bitsandbytes {bnb.__version__} mode '{mode}' on {device} computes wrong results "
            f"(relative error {error:.3g} on a test layer)",
            where=f"{where}.mode" if mode != "int8" else "evaluate.device",
            fix=four_bit_fix if mode != "int8" else int8_fix,
        )


class _DropInt8CastWarning(logging.Filter):
    """LLM.int8 quantizes fp16 activations, so bitsandbytes casts float32/bfloat16 inputs to fp16 — by design —
    and logs a warning on every call of every layer (thousands per evaluation). Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


_FILTER = _DropInt8CastWarning()


def quiet_int8_cast_warning() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def load_bnb_checkpoint(directory: Path, auto_class: Any, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A saved bitsandbytes stage, through transformers (which rebuilds the bitsandbytes layers), straight onto
    `device`: int8 layers loaded on the CPU and then moved to CUDA keep CPU state their CUDA kernel refuses."""
    require_bitsandbytes(str(directory))
    quiet_int8_cast_warning()
    return auto_class.from_pretrained(directory, dtype="auto", device_map={"": str(device)}).eval()


def _check_quantizable(handle: ModelHandle, where: str) -> Any:
    from transformers import PreTrainedModel

    network = handle.model
    if not isinstance(network, PreTrainedModel):
        raise ConfigError(
            f"bitsandbytes quantization goes through transformers, but the model is a {type(network).__name__}",
            where=where,
            fix="apply bnb to a transformers model (a hub name, a saved folder, a GGUF file)",
        )
    if handle.transforms or getattr(network.config, "quantization_config", None) is not None:
        done = ", ".join(t["name"] for t in handle.transforms) or "an earlier step"
        raise ConfigError(
            f"the model is already quantized ({done})",
            where=where,
            fix="quantize once per recipe: remove one of the quantization steps, or give bnb `source: baseline`",
        )
    return network


def _float_dtype(network: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in network.parameters() if p.is_floating_point())


def _convertible_linears(network: torch.nn.Module, ignore: list[str], where: str) -> list[str]:
    """The Linear layers transformers will quantize with `llm_int8_skip_modules=ignore` (its own matching rule)."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    for index, entry in enumerate(ignore):
        try:
            re.compile(entry)  # transformers matches each entry as a regular expression
        except re.error as exc:
            raise ConfigError(
                f"'{entry}' is not a valid regular expression: {exc}",
                where=f"{where}.ignore[{index}]",
                fix="write a module name (`lm_head`), a prefix (`model.layers.0`) or a regex (`model.layers.*.mlp`)",
            ) from None
    # transformers replaces exactly `nn.Linear` (not its subclasses) and GPT-2's Conv1D.
    planned = [
        name
        for name, module in network.named_modules()
        if (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, ignore)
    ]
    if not planned:
        raise ConfigError(
            f"no Linear layer is left to quantize once {ignore} are kept in full precision",
            where=f"{where}.ignore",
            fix="keep only the modules that must stay in full precision, e.g. [lm_head]",
        )
    return planned
