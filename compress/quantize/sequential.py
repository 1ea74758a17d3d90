"""Layer-by-layer calibration: the engine GPTQ and AWQ share.

The calibration windows run through the model up to the first decoder layer once; then each layer in turn is
moved to the calibration device, given to the algorithm (which hooks its Linear modules, replays the layer's
inputs as often as it needs, and quantizes the layer in place), replayed once more so the next layer sees the
*quantized* layer's outputs (as in the GPTQ reference), and moved back. Only one layer and the activations
between two layers are on the device at a time, so a model larger than the GPU still quantizes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from compress.architectures.decoder import decoder_layers, decoder_map

log = logging.getLogger("compress")

# The algorithm's callback: (layer index, the layer on the device, replay) — replay runs every calibration
# batch through the layer and returns its outputs.
LayerCallback = Callable[[int, torch.nn.Module, Callable[[], list[torch.Tensor]]], None]
# Folds one batch of a module's inputs into a running statistic: (statistic or None, inputs, count so far) →
# (statistic, new count); e.g. GPTQ's Hessian or Wanda's input norms.
Accumulate = Callable[[Any, torch.Tensor, int], tuple[Any, int]]


class _ReachedFirstLayer(Exception):
    """Raised by the capture hook: nothing past the first decoder layer needs to run."""


@dataclass
class _LayerCall:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def with_hidden_states(self, hidden: torch.Tensor) -> _LayerCall:
        if self.args:
            return _LayerCall((hidden, *self.args[1:]), self.kwargs)
        return _LayerCall((), {**self.kwargs, "hidden_states": hidden})


def _hidden_states(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _capture_first_layer_calls(
    model: torch.nn.Module, layers: torch.nn.ModuleList, batches: list[torch.Tensor], device: torch.device
) -> list[_LayerCall]:
    """Run embeddings (and whatever precedes layer 0) on `device`; keep what layer 0 was called with."""
    calls: list[_LayerCall] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(_LayerCall(args, kwargs))
        raise _ReachedFirstLayer

    # Everything but the layers goes to the device (embeddings, rotary tables, final norm, head): detach the
    # layers while moving so they stay where they are.
    parent_path, _, attribute = decoder_map(model).layers.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    original_device = next(model.parameters()).device
    setattr(parent, attribute, torch.nn.ModuleList())
    model.to(device)
    setattr(parent, attribute, layers)
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for input_ids in batches:
                with contextlib.suppress(_ReachedFirstLayer):
                    model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        handle.remove()
        setattr(parent, attribute, torch.nn.ModuleList())
        model.to(original_device)
        setattr(parent, attribute, layers)
    return calls


def calibrate_layer_by_layer(
    model: torch.nn.Module,
    batches: list[torch.Tensor],
    device: torch.device,
    on_layer: LayerCallback,
    *,
    progress: bool = True,
    desc: str = "quantize",
) -> None:
    """Give each decoder layer, on `device`, to `on_layer` with a replay of its calibration inputs.

    On an accelerator the model is first moved to host memory (if it was not there): only the layer being
    calibrated and the activations occupy the device, so the peak there is that of one layer, whatever the model's
    size. The model is left in host memory.
    """
    layers = decoder_layers(model)
    if device.type != "cpu":
        model.to("cpu")
    calls = _capture_first_layer_calls(model, layers, batches, device)
    for index in tqdm(range(len(layers)), desc=desc, unit="layer", disable=not progress):
        layer = layers[index]
        home = next(layer.parameters()).device
        layer.to(device)

        def replay(layer: torch.nn.Module = layer, calls: list[_LayerCall] = calls) -> list[torch.Tensor]:
            with torch.no_grad():
                return [_hidden_states(layer(*call.args, **call.kwargs)) for call in calls]

        on_layer(index, layer, replay)
        outputs = replay()  # the next layer is calibrated on this layer's quantized outputs
        calls = [call.with_hidden_states(out) for call, out in zip(calls, outputs, strict=True)]
        del outputs
        layer.to(home)
        _drop_dequantized_caches(layer)
        log.debug("%s: layer %d/%d done", desc, index + 1, len(layers))


def observe_inputs(
    modules: dict[str, torch.nn.Module],
    groups: list[tuple[str, ...]],
    accumulate: Accumulate,
    replay: Callable[[], list[torch.Tensor]],
) -> dict[tuple[str, ...], Any]:
    """Replay the layer once, folding the inputs of each group's first module into its statistic.

    The modules of a group read the same input (`shared_input_groups`), so one statistic serves them all.
    """
    statistics: dict[tuple[str, ...], tuple[Any, int]] = dict.fromkeys(groups, (None, 0))

    def observe(group: tuple[str, ...]) -> Callable[[torch.nn.Module, tuple], None]:
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            statistic, count = statistics[group]
            statistics[group] = accumulate(statistic, args[0].detach(), count)

        return hook

    handles = [modules[group[0]].register_forward_pre_hook(observe(group)) for group in groups]
    try:
        replay()
    finally:
        for handle in handles:
            handle.remove()
    return {group: statistic for group, (statistic, _count) in statistics.items()}


def _drop_dequantized_caches(layer: torch.nn.Module) -> None:
    """Quantized layers keep a dense copy of their weight after a forward (compressed_tensors.QuantizedLinear);
    after calibration those copies would add up to the float model's size again."""
    for module in layer.modules():
        clear = getattr(module, "clear_cache", None)
        if callable(clear):
            clear()
