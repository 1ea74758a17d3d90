import torch

from compress.models.serialize import load_handle, save_handle
from compress.runtime.torch import TorchRuntime
from compress.steps.dynamic_int8 import quantize_dynamic_int8


def _batch(handle, texts):
    return dict(handle.tokenizer(texts, padding=True, return_tensors="np"))


def test_save_load_roundtrip_fp32(tiny_bert, tmp_path, sst2_dev):
    save_handle(tiny_bert.replace(max_length=24), tmp_path / "m")
    loaded = load_handle(tmp_path / "m")
    assert loaded.max_length == 24 and loaded.label_names == ["0", "1"]
    batch = _batch(tiny_bert, sst2_dev.texts[:8])
    expected = TorchRuntime(tiny_bert).predict(batch)
    assert (TorchRuntime(loaded).predict(batch) == expected).all()


def test_save_load_roundtrip_dynamic_int8_keeps_int8_weights(tiny_bert, tmp_path, sst2_dev):
    params = {"per_channel": True, "skip": []}
    quantized = tiny_bert.replace(
        model=quantize_dynamic_int8(tiny_bert.model, **params),
        transforms=[{"name": "dynamic_int8", **params}],
    )
    save_handle(quantized, tmp_path / "q")
    loaded = load_handle(tmp_path / "q")
    batch = _batch(tiny_bert, sst2_dev.texts[:8])
    assert (TorchRuntime(loaded).predict(batch) == TorchRuntime(quantized).predict(batch)).all()
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert any(t.dtype == torch.int8 for t in tensors.values())


def test_cast_stage_reloads_in_half_precision(tiny_bert, tmp_path):
    from compress.steps.cast import Cast

    fp32_bytes = TorchRuntime(tiny_bert).size_bytes()
    half = Cast(dtype="bfloat16").apply(tiny_bert, ctx=None)
    assert half.model is tiny_bert.model  # cast in place, not copied
    save_handle(half, tmp_path / "h")
    loaded = load_handle(tmp_path / "h")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert TorchRuntime(loaded).size_bytes() * 2 == fp32_bytes


def test_a_folder_holding_one_gguf_file_resolves_to_it(tmp_path) -> None:
    from compress.models.source import resolve_source

    (tmp_path / "model.Q4_1.gguf").write_bytes(b"GGUF")
    assert resolve_source(str(tmp_path)).gguf_file == "model.Q4_1.gguf"
    (tmp_path / "config.json").write_text("{}")  # a transformers folder: its config wins
    assert resolve_source(str(tmp_path)).gguf_file is None
