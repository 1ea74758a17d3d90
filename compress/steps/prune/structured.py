"""`structured`: remove attention heads (whole key/value groups under GQA), feed-forward neurons and whole layers,
for BERT encoders and Llama-style decoders (`compress.architectures.blocks`). The result is a smaller dense model:
every runtime runs it faster, no sparse kernels needed. Layers may end up with different widths (per-layer
shares); the saved stage records each resized Linear's shape, so it reloads exactly."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from compress.architectures.blocks import block_map, heads_of
from compress.config import Schema
from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.models.placement import collect_on_host
from compress.models.size import count_parameters
from compress.prune.activations import UnitStatistics, collect_unit_statistics
from compress.prune.structured import drop_layers, prune_block
from compress.steps.base import StageContext, Step, StepConfig
from compress.steps.calibrated import calibration_file
from compress.steps.quantize.base import already_quantized
from compress.steps.quantize.config import CalibrationSpec
from compress.tasks import get_task

Share = float | list[float]


class StructureSpec(Schema):
    """What structured pruning removes (the `structured` step; a distill student `{structured: {...}}` too)."""

    heads: Share = Field(
        0.0,
        description="Share of attention heads removed (under grouped-query attention, of key/value groups, each "
        "with its query heads): one share for every layer, or a list with one per layer (before `drop_layers`).",
    )
    ffn: Share = Field(0.0, description="Share of feed-forward neurons removed: one for every layer, or one per layer.")
    drop_layers: list[int] = Field(default_factory=list, description="Layers removed whole (0-based indices).")
    importance: Literal["weights", "activations"] = Field(
        "weights",
        description="How units are ranked: `weights` (data-free norms) or `activations` (each head group's and "
        "neuron's exact contribution to its block's output on `calibration` text, Minitron-style).",
    )
    calibration: CalibrationSpec = Field(
        default_factory=lambda: CalibrationSpec(samples=256, seq_len=128, batch_size=16),
        description="With `importance: activations`: `samples` rows of the calibration split (sentences for a "
        "classifier, documents cut into `seq_len`-token windows for a causal LM), `batch_size` per forward.",
    )

    @field_validator("heads", "ffn")
    @classmethod
    def _shares(cls, value: Share) -> Share:
        for share in value if isinstance(value, list) else [value]:
            if not 0 <= share < 1:
                raise ValueError(f"a share of units removed must be in [0, 1), got {share}")
        return value


class StructuredConfig(StepConfig, StructureSpec):
    """The `structured` step: what to remove, plus the fields every step has."""


def _per_layer(share: Share, layers: int, where: str) -> list[float]:
    if not isinstance(share, list):
        return [share] * layers
    if len(share) != layers:
        raise ConfigError(
            f"{len(share)} shares given for a model of {layers} layers",
            where=where,
            fix=f"give one share for every layer ({layers}), or a single share for all",
        )
    return share


def _kept(units: int, share: float) -> int | None:
    """How many of `units` stay (at least one), or None when nothing is removed."""
    return None if share == 0 else max(1, round(units * (1 - share)))


class Structured(Step):
    """Structured pruning by weight-based (data-free) or activation-based importance."""

    name: ClassVar[str] = "structured"
    Config = StructuredConfig
    config: StructuredConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        if already_quantized(model.model):
            raise ConfigError(
                "the model is already weight-quantized; its packed weights cannot be sliced",
                where=self.name,
                fix="prune first, then quantize",
            )
        collect_on_host(model.model, self.name)
        activations = unit_statistics(model, self.config, ctx) if self.config.importance == "activations" else None
        self._details = prune_structure(model.model, self.config, self.name, activations)
        return model.replace(transforms=[*model.transforms, structure_transform(model.model)])


def unit_statistics(
    model: ModelHandle, spec: StructureSpec, ctx: StageContext, spec_where: str = "structured"
) -> list[UnitStatistics]:
    """The calibration statistics activation importance ranks by, batched as the model's task batches its data."""
    calibration = spec.calibration
    if calibration.data is None:
        data = ctx.calibration_data(calibration.samples)
    else:
        data = calibration_file(calibration, ctx, f"{spec_where}.calibration").head(calibration.samples)
    # Only the inputs go through the model; a classifier's batching wants a label per row all the same.
    data = replace(data, labels=data.labels if data.labels is not None else [0] * len(data))
    length = min(calibration.seq_len, model.max_length or calibration.seq_len)
    eval_spec = ctx.eval_spec.model_copy(update={"seq_len": length, "max_length": length})
    batches = get_task(model.task).eval_batches(model.tokenizer, data, eval_spec, length, [calibration.batch_size])
    inputs = ({k: torch.from_numpy(v) for k, v in b.inputs.items()} for b in batches.make(calibration.batch_size))
    return collect_unit_statistics(model.model, inputs)


def prune_structure(
    network: torch.nn.Module, spec: StructureSpec, where: str, activations: list[UnitStatistics] | None = None
) -> dict[str, Any]:
    """Remove what `spec` says from `network`, in place; returns what is left (heads and neurons per layer).
    With `activations` (one per layer, `unit_statistics`), units are ranked by them instead of their weights."""
    blocks, layers_path = block_map(network)
    heads = heads_of(network.config)
    layers = network.get_submodule(layers_path)
    count = len(layers)
    bad = [i for i in spec.drop_layers if not 0 <= i < count]
    if bad or len(set(spec.drop_layers)) >= count:
        raise ConfigError(
            f"drop_layers {spec.drop_layers} must name distinct layers in 0..{count - 1} and keep at least one",
            where=f"{where}.drop_layers",
            fix=f"give indices below {count}, fewer than {count} of them",
        )
    head_shares = _per_layer(spec.heads, count, f"{where}.heads")
    ffn_shares = _per_layer(spec.ffn, count, f"{where}.ffn")
    before = count_parameters(network)
    started = time.perf_counter()
    for index, layer in enumerate(layers):
        if index in spec.drop_layers:
            continue
        groups = layer.get_submodule(blocks.key).out_features // heads.head_dim
        neurons = layer.get_submodule(blocks.ffn_out).in_features
        statistics = activations[index] if activations is not None else None
        prune_block(
            layer, blocks, heads, _kept(groups, head_shares[index]), _kept(neurons, ffn_shares[index]), statistics
        )
    drop_layers(network, layers_path, spec.drop_layers)
    return {
        **layer_widths(network),
        "importance": spec.importance,
        "parameters_before": before,
        "parameters_after": count_parameters(network),
        "prune_seconds": round(time.perf_counter() - started, 2),
    }


def layer_widths(network: torch.nn.Module) -> dict[str, Any]:
    """Query heads and feed-forward neurons of each layer, and the layer count."""
    blocks, layers_path = block_map(network)
    head_dim = heads_of(network.config).head_dim
    layers = network.get_submodule(layers_path)
    return {
        "query_heads": [layer.get_submodule(blocks.query).out_features // head_dim for layer in layers],
        "ffn_neurons": [layer.get_submodule(blocks.ffn_out).in_features for layer in layers],
        "layers": len(layers),
    }


def structure_transform(network: torch.nn.Module) -> dict[str, Any]:
    """The handle's transform record that rebuilds these layer shapes on load (`resize_linears`)."""
    blocks, layers_path = block_map(network)
    layers = network.get_submodule(layers_path)
    shapes = {
        f"{layers_path}.{index}.{path}": list(layer.get_submodule(path).weight.shape)
        for index, layer in enumerate(layers)
        for path in (*blocks.attention_linears(), *blocks.ffn_in, blocks.ffn_out)
    }
    return {"name": "structured", "shapes": shapes}


def resize_linears(model: torch.nn.Module, shapes: dict[str, list[int]]) -> torch.nn.Module:
    """The `structured` transform replayed on load: give each named Linear its pruned (out, in) shape, so the
    saved tensors fit (the layer count is already in the saved config)."""
    from compress.prune.structured import set_module

    for name, (out_features, in_features) in shapes.items():
        old = model.get_submodule(name)
        new = torch.nn.Linear(in_features, out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        set_module(model, name, new)
    return model
