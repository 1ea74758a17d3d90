"""`model.device_map`: a model spread over devices (and disk) at load evaluates through accelerate's hooks;
weight-quantization steps gather it into host memory first, or refuse weights left on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import CALIBRATION, context, logits, probe_ids

from compress.config import ModelSpec
from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.models.load import load_model
from compress.models.placement import spread_over_devices
from compress.runtime.torch import TorchRuntime
from compress.steps.quantize.gptq import GPTQ
from compress.steps.quantize.rtn import RTN


def _saved(handle: ModelHandle, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return folder


def _device_map(layer1: str) -> dict[str, str]:
    return {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": layer1,
        "model.norm": "cpu",
        "lm_head": "cpu",
    }


def test_disk_offloaded_model_evaluates_and_quantizing_it_is_refused(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    spec = ModelSpec(
        str(_saved(tiny_llama, tmp_path)),
        task="causal-lm",
        device_map=_device_map("disk"),
        offload_folder=str(tmp_path / "offload"),
    )
    handle = load_model(spec)
    assert spread_over_devices(handle.model)
    assert handle.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # on disk until used
    ids = probe_ids(tiny_llama, wiki)
    torch.testing.assert_close(logits(handle.model, ids), logits(tiny_llama.model, ids))
    runtime = TorchRuntime(handle)  # must not try to `.to()` the dispatched model
    assert spread_over_devices(runtime.model)
    with pytest.raises(ConfigError, match="offloaded to disk") as error:
        GPTQ(bits=4, group_size=16, calibration=CALIBRATION).apply(handle, context(wiki, tmp_path))
    assert error.value.where == "gptq" and "max_memory" in error.value.fix


def test_placement_fields_need_a_device_map(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    folder = str(_saved(tiny_llama, tmp_path))
    with pytest.raises(ConfigError) as error:
        load_model(ModelSpec(folder, task="causal-lm", max_memory={"cpu": "1GiB"}))
    assert error.value.where == "model.max_memory"
    with pytest.raises(ConfigError) as error:
        load_model(ModelSpec(folder, task="causal-lm", device_map=_device_map("disk")))
    assert error.value.where == "model.offload_folder"


@pytest.mark.gpu
def test_model_split_over_gpu_and_cpu_is_gathered_then_quantized(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    spec = ModelSpec(str(_saved(tiny_llama, tmp_path)), task="causal-lm", device_map=_device_map("cuda:0"))
    handle = load_model(spec)
    assert spread_over_devices(handle.model)
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    torch.testing.assert_close(logits(handle.model, ids).cpu(), reference, rtol=1e-4, atol=1e-4)
    ctx = context(wiki, tmp_path)
    ctx.device = torch.device("cuda")
    RTN(bits=8, group_size=16).apply(handle, ctx)
    assert not spread_over_devices(handle.model)
    assert isinstance(handle.model.model.layers[1].mlp.down_proj, QuantizedLinear)
    assert float((logits(handle.model, ids) - reference).abs().max()) < 0.05
