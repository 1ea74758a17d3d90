"""Save and load a stage's model: `save_pretrained` config and tokenizer, weights in safetensors.

Weight-quantized LLM stages (`rtn`, `gptq`, `awq`) are saved in the compressed-tensors layout (packed int4/int8
weights, scales and zero points, `quantization_config` in config.json), so transformers and vLLM load the same
folder. Dynamic-INT8 Linear layers keep packed weights that neither `save_pretrained` nor safetensors understand;
they are stored as their int8 values plus scale and zero point, so the file holds the real INT8 weights
and loading never unpickles anything. bitsandbytes stages (`bnb`) are written and read by transformers itself
(`save_pretrained` / `from_pretrained`): its own bitsandbytes layout, the one other tools load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer

from compress.errors import ModelError
from compress.models.handle import ModelHandle
from compress.models.load import AUTO_CLASSES
from compress.models.transforms import replay

WEIGHTS_FILE = "model.safetensors"
META_FILE = "compress-model.json"
_QSUFFIXES = (".qweight", ".qbias", ".qscale", ".qzero_point", ".qaxis")


def _is_dynamic_quantized(module: torch.nn.Module) -> bool:
    return callable(getattr(module, "weight", None)) and hasattr(module, "_packed_params")


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    quantized_prefixes = []
    for name, module in model.named_modules():
        if not _is_dynamic_quantized(module):
            continue
        quantized_prefixes.append(name + ".")
        weight = module.weight()
        tensors[f"{name}.qweight"] = weight.int_repr().contiguous()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            tensors[f"{name}.qscale"] = weight.q_per_channel_scales().to(torch.float64)
            tensors[f"{name}.qzero_point"] = weight.q_per_channel_zero_points().to(torch.int64)
            tensors[f"{name}.qaxis"] = torch.tensor([weight.q_per_channel_axis()])
        else:
            tensors[f"{name}.qscale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            tensors[f"{name}.qzero_point"] = torch.tensor([weight.q_zero_point()])
        bias = module.bias()
        if bias is not None:
            tensors[f"{name}.qbias"] = bias.detach().contiguous()
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in quantized_prefixes) or not isinstance(value, torch.Tensor):
            continue
        tensors[key] = value.detach().contiguous()
    return _dedupe_shared(tensors)


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): store each storage once."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in tensors.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen and tensor.numel() > 0:
            continue
        seen.add(ident)
        out[key] = tensor
    return out


def save_handle(handle: ModelHandle, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if _quant_method(handle.model.config) == "bitsandbytes":
        # transformers' own bitsandbytes layout (int8 weights + row scales, or packed 4-bit codes + quant-state
        # tensors): only its save_pretrained writes it, and from_pretrained rebuilds the bitsandbytes layers.
        handle.model.save_pretrained(directory)
    else:
        handle.model.config.save_pretrained(directory)
        save_file(state_tensors(handle.model), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    handle.tokenizer.save_pretrained(directory)
    meta = {
        "task": handle.task,
        "max_length": handle.max_length,
        "label_names": handle.label_names,
        "transforms": handle.transforms,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def load_handle(directory: Path, device: torch.device | str = "cpu") -> ModelHandle:
    """A saved stage. Stages load on the CPU and the runtime moves them, except bitsandbytes ones, which load
    straight onto `device` (the device they will run on)."""
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise ModelError(f"{directory} is not a saved compress stage (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    config = AutoConfig.from_pretrained(directory)
    if _quant_method(config) == "bitsandbytes":
        from compress.steps.quantize.bnb import load_bnb_checkpoint

        model = load_bnb_checkpoint(directory, AUTO_CLASSES[meta["task"]], device)
    else:
        model = _load_weights(directory, config, meta)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        task=meta["task"],
        max_length=meta["max_length"],
        label_names=meta["label_names"],
        transforms=meta["transforms"],
    )


def _load_weights(directory: Path, config: object, meta: dict) -> torch.nn.Module:
    """A compress-written stage: the architecture from its config, its transforms replayed, its tensors loaded."""
    model = AUTO_CLASSES[meta["task"]].from_config(config)
    # Structure first (pruned shapes, INT8 modules), then the packed layers sized from it.
    model = replay(model, meta["transforms"])
    if _quant_method(config) == "compressed-tensors":  # packed weights: QuantizedLinear modules to load into
        from compress.models.compressed_tensors import build_quantized_skeleton

        model = build_quantized_skeleton(model, _as_dict(config.quantization_config))
    tensors = load_file(str(directory / WEIGHTS_FILE))
    plain = {k: v for k, v in tensors.items() if not k.endswith(_QSUFFIXES)}
    # Start from the fresh model's own state so quantized modules find the packed entries they expect,
    # then overwrite with the saved tensors and finally the saved int8 weights.
    saved_dtypes = {t.dtype for t in plain.values() if t.is_floating_point()}
    if len(saved_dtypes) == 1 and torch.float32 not in saved_dtypes:  # a `cast` stage: keep its precision
        model = model.to(saved_dtypes.pop())
    state = model.state_dict()
    unexpected = [k for k in plain if k not in state]
    missing = [k for k in state if k not in plain and not _is_tied_or_quantized(model, k)]
    if missing or unexpected:
        raise ModelError(
            f"{directory}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})",
            fix="re-run the recipe to rebuild this stage",
        )
    state.update(plain)
    model.load_state_dict(state)
    _load_quantized(model, tensors)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _as_dict(quantization_config: object) -> dict:
    return quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()


def _quant_method(config: object) -> str | None:
    """`quant_method` of a config's `quantization_config` (a dict or transformers' config object), if any."""
    quantization = getattr(config, "quantization_config", None)
    return None if quantization is None else _as_dict(quantization).get("quant_method")


def _load_quantized(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for name, module in model.named_modules():
        if not _is_dynamic_quantized(module):
            continue
        int_weight = tensors[f"{name}.qweight"]
        scale, zero_point = tensors[f"{name}.qscale"], tensors[f"{name}.qzero_point"]
        if f"{name}.qaxis" in tensors:
            axis = int(tensors[f"{name}.qaxis"][0])
            weight = torch._make_per_channel_quantized_tensor(int_weight, scale, zero_point, axis)
        else:
            weight = torch._make_per_tensor_quantized_tensor(int_weight, float(scale[0]), int(zero_point[0]))
        module.set_weight_bias(weight, tensors.get(f"{name}.qbias"))


def _is_tied_or_quantized(model: torch.nn.Module, key: str) -> bool:
    if "_packed_params" in key or key.endswith((".scale", ".zero_point")):
        return True  # dynamic-INT8 bookkeeping, restored by _load_quantized
    tied = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied, dict):
        tied = list(tied)
    return key in tied
