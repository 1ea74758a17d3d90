"""Decoder-only architectures as data, keyed by `config.model_type`.

Paths are attribute paths from the `*ForCausalLM` module; projections inside a layer are relative to the layer.
A `ScaleMapping` says: the output channels of `smooth` feed the inputs of every module in `balance`, so AWQ may
divide `smooth`'s outputs by a per-channel scale and multiply the balance layers' input columns by it (the
function is unchanged in exact arithmetic). As in llm-compressor's `modifiers/awq/mappings.py`, a mapping whose
shapes do not line up (v_proj → o_proj under grouped-query attention) is skipped at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.architectures.lookup import entry_for


@dataclass(frozen=True)
class ScaleMapping:
    smooth: str  # e.g. "input_layernorm" (a norm's weight or a Linear's output rows)
    balance: tuple[str, ...]  # e.g. ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass(frozen=True)
class DecoderMap:
    layers: str  # the ModuleList of decoder layers
    scale_mappings: tuple[ScaleMapping, ...]


_LLAMA = DecoderMap(
    layers="model.layers",
    scale_mappings=(
        ScaleMapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ScaleMapping("self_attn.v_proj", ("self_attn.o_proj",)),
        ScaleMapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ScaleMapping("mlp.up_proj", ("mlp.down_proj",)),
    ),
)

_OPT = DecoderMap(
    layers="model.decoder.layers",
    scale_mappings=(
        ScaleMapping("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ScaleMapping("self_attn.v_proj", ("self_attn.out_proj",)),
        ScaleMapping("final_layer_norm", ("fc1",)),
        ScaleMapping("fc1", ("fc2",)),
    ),
)

DECODERS: dict[str, DecoderMap] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "opt": _OPT,
}


def decoder_map(model: torch.nn.Module) -> DecoderMap:
    return entry_for(model, DECODERS, "decoder map", "compress.architectures.DECODERS")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.get_submodule(decoder_map(model).layers)


def shared_input_groups(model: torch.nn.Module, names: list[str]) -> list[tuple[str, ...]]:
    """`names` (modules of one layer, relative to it) grouped by the input they read: a mapping's balance layers
    see the same tensor (q/k/v, gate/up), so one set of input statistics serves them all. Modules of a
    balance tuple that are not all in `names` stay alone, as does every module no mapping names."""
    chosen = set(names)
    groups = [m.balance for m in decoder_map(model).scale_mappings if len(m.balance) > 1 and chosen >= set(m.balance)]
    grouped = {name for group in groups for name in group}
    return groups + [(name,) for name in names if name not in grouped]
