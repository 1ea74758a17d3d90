"""Where a transformer block's prunable units live, as data, keyed by `config.model_type`.

Structured pruning removes attention heads (under grouped-query attention: whole key/value groups, each with the
query heads that read it), feed-forward neurons and whole layers. Paths are relative to one layer; `layers` is
the ModuleList of layers from the base model. Both BERT and Llama-style attention infer the head count from the
projection widths (`view(..., -1, head_dim)`), so slicing the Linears is the whole change: the head size stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress.architectures.lookup import entry_for


@dataclass(frozen=True)
class BlockMap:
    layers: str  # the ModuleList of layers, from the base model (BertModel, LlamaModel)
    query: str  # output rows grouped by query head
    key: str  # output rows grouped by key/value head
    value: str
    attention_output: str  # input columns grouped by query head
    ffn_in: tuple[str, ...]  # output rows are the feed-forward neurons (gate and up for gated MLPs)
    ffn_out: str  # input columns are the neurons

    def attention_linears(self) -> tuple[str, ...]:
        return (self.query, self.key, self.value, self.attention_output)


_BERT = BlockMap(
    layers="encoder.layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
)

_LLAMA = BlockMap(
    layers="layers",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attention_output="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
)

BLOCKS: dict[str, BlockMap] = {
    "bert": _BERT,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


@dataclass(frozen=True)
class Heads:
    head_dim: int
    query_heads: int  # per layer, as built
    kv_heads: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.query_heads // self.kv_heads


def block_map(model: torch.nn.Module) -> tuple[BlockMap, str]:
    """The model's block map and the full path of its layer list (under the base model when the model is a
    task model: `bert.encoder.layer`, `model.layers`)."""
    blocks = entry_for(model, BLOCKS, "structured-pruning block map", "compress.architectures.blocks.BLOCKS")
    prefix = getattr(model, "base_model_prefix", "")
    return blocks, f"{prefix}.{blocks.layers}" if prefix and hasattr(model, prefix) else blocks.layers


def heads_of(config: object) -> Heads:
    """Head size and counts from the model's (original) config; pruning never changes the head size."""
    query_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // query_heads
    return Heads(head_dim, query_heads, getattr(config, "num_key_value_heads", None) or query_heads)
