"""Activation-based importance for `structured`: the statistics give each unit's exact contribution to its block's
output, padding does not count, a unit the weights rank first but the data never activates goes first, and the step
prunes with it end to end (BERT on SST-2 sentences, Llama on text windows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import context
from train_helpers import make_context

from compress.architectures.blocks import BLOCKS, heads_of
from compress.data.text_data import TextData
from compress.errors import CompressError
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.prune.activations import collect_unit_statistics, head_group_contributions, neuron_contributions
from compress.prune.structured import neuron_scores
from compress.steps.prune.structured import Structured, StructureSpec, unit_statistics

CALIBRATION = {"samples": 32, "seq_len": 32, "batch_size": 8}


def captured_inputs(network: torch.nn.Module, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().float()))
    with torch.no_grad():
        network(**batch)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def test_contributions_are_each_units_output_norm(tiny_llama: ModelHandle, wiki: TextData) -> None:
    ids = tiny_llama.tokenizer(" ".join(wiki.texts[:40]), return_tensors="pt")["input_ids"][0]
    batch = {"input_ids": ids[: 4 * 32].reshape(4, 32)}
    (statistics, *_) = collect_unit_statistics(tiny_llama.model, [batch])
    layer, blocks, heads = tiny_llama.model.model.layers[0], BLOCKS["llama"], heads_of(tiny_llama.model.config)
    attention_in = captured_inputs(tiny_llama.model, layer.self_attn.o_proj, batch)
    ffn_in = captured_inputs(tiny_llama.model, layer.mlp.down_proj, batch)
    assert statistics.tokens == attention_in.shape[0] == 128
    width = heads.head_dim * heads.group  # one key/value group: its query heads' columns of o_proj
    output = layer.self_attn.o_proj.weight.detach().float()
    direct = [
        torch.linalg.matrix_norm(attention_in[:, columns] @ output[:, columns].T)
        for columns in (slice(g * width, (g + 1) * width) for g in range(output.shape[1] // width))
    ]
    computed = head_group_contributions(layer, blocks, heads, statistics.attention_gram)
    torch.testing.assert_close(computed, torch.stack(direct), rtol=1e-4, atol=1e-4)
    down = layer.mlp.down_proj.weight.detach().float()
    direct = torch.stack([torch.linalg.matrix_norm(ffn_in[:, [n]] @ down[:, [n]].T) for n in range(down.shape[1])])
    computed = neuron_contributions(layer, blocks, statistics.ffn_square_norms)
    torch.testing.assert_close(computed, direct, rtol=1e-4, atol=1e-4)


def test_padding_does_not_count(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    texts = [sst2_dev.texts[0], sst2_dev.texts[3]]  # of different lengths: one row is padded
    tokenizer = tiny_bert.tokenizer
    together = collect_unit_statistics(tiny_bert.model, [dict(tokenizer(texts, padding=True, return_tensors="pt"))])
    apart = collect_unit_statistics(tiny_bert.model, [dict(tokenizer([t], return_tensors="pt")) for t in texts])
    for joint, single in zip(together, apart, strict=True):
        assert joint.tokens == single.tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
        torch.testing.assert_close(joint.attention_gram, single.attention_gram, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(joint.ffn_square_norms, single.ffn_square_norms, rtol=1e-4, atol=1e-5)


def silenced_loud_neuron(handle: ModelHandle) -> None:
    """Neuron 0 of layer 0: the largest weights of all, and a bias that keeps GELU's output at zero on any input."""
    ffn_in, ffn_out = (
        handle.model.bert.encoder.layer[0].intermediate.dense,
        handle.model.bert.encoder.layer[0].output.dense,
    )
    with torch.no_grad():
        ffn_in.weight[0] *= 20
        ffn_out.weight[:, 0] *= 20
        ffn_in.bias[0] = -1e4


def test_a_unit_the_data_never_activates_goes_first(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    silenced_loud_neuron(tiny_bert)
    layer, blocks = tiny_bert.model.bert.encoder.layer[0], BLOCKS["bert"]
    assert neuron_scores(layer, blocks).argmax() == 0  # the weights would keep it above all others
    ctx = make_context(sst2_train, sst2_dev, tmp_path)
    statistics = unit_statistics(tiny_bert, StructureSpec(calibration=CALIBRATION), ctx)
    assert neuron_contributions(layer, blocks, statistics[0].ffn_square_norms).argmin() == 0  # it adds nothing

    by_weights = Structured(ffn=0.5).apply(tiny_bert.replace(model=_copy(tiny_bert)), ctx)
    step = Structured(ffn=0.5, importance="activations", calibration=CALIBRATION)
    by_activations = step.apply(tiny_bert, ctx)
    assert step.details()["importance"] == "activations" and step.details()["ffn_neurons"] == [32, 32]
    loud = tiny_bert.model.bert.encoder.layer[0].intermediate.dense.bias  # after slicing, in place
    assert (loud > -1e3).all()  # the silent neuron was removed
    assert (by_weights.model.bert.encoder.layer[0].intermediate.dense.bias <= -1e3).any()  # the weights kept it
    encoded = tiny_bert.tokenizer(sst2_dev.texts[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = by_activations.model(**encoded).logits
    save_handle(by_activations, tmp_path / "stage")
    with torch.no_grad():
        assert torch.equal(load_handle(tmp_path / "stage").model(**encoded).logits, expected)


def test_llama_heads_and_neurons_by_activations(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    step = Structured(heads=0.5, ffn=0.5, importance="activations", calibration=CALIBRATION)
    handle = step.apply(tiny_llama, context(wiki, tmp_path))
    first = handle.model.model.layers[0]
    d = heads_of(handle.model.config).head_dim
    assert first.self_attn.k_proj.out_features == d and first.mlp.down_proj.in_features == 32
    ids = tiny_llama.tokenizer(wiki.texts[-1], return_tensors="pt")["input_ids"][:, :16]
    assert handle.model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)


def _copy(handle: ModelHandle) -> torch.nn.Module:
    import copy

    return copy.deepcopy(handle.model)


def test_a_distill_student_sliced_by_activations(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    from compress.steps.distill.step import Distill

    silenced_loud_neuron(tiny_bert)
    student_spec = {"structured": {"ffn": 0.5, "importance": "activations", "calibration": CALIBRATION}}
    step = Distill(student=student_spec, epochs=1, learning_rate=1e-3)
    step.config.progress = False
    student = step.apply(tiny_bert, make_context(sst2_train.head(64), sst2_dev, tmp_path))
    first = student.model.bert.encoder.layer[0].intermediate.dense
    assert first.out_features == 32 and (first.bias > -1e3).all()  # measured on the teacher: the silent one went


def test_calibration_from_a_text_file(tiny_bert: ModelHandle, sst2_train, sst2_dev, tmp_path: Path) -> None:
    silenced_loud_neuron(tiny_bert)
    sentences = tmp_path / "calibration.txt"
    sentences.write_text("\n".join(sst2_dev.texts[:24]) + "\n", encoding="utf-8")
    calibration = CALIBRATION | {"data": str(sentences), "samples": 24}
    step = Structured(ffn=0.5, importance="activations", calibration=calibration)
    handle = step.apply(tiny_bert, make_context(sst2_train, sst2_dev, tmp_path))
    assert (handle.model.bert.encoder.layer[0].intermediate.dense.bias > -1e3).all()
    missing = Structured(
        ffn=0.5, importance="activations", calibration=CALIBRATION | {"data": str(tmp_path / "no.txt")}
    )
    with pytest.raises(CompressError) as error:
        missing.apply(tiny_bert, make_context(sst2_train, sst2_dev, tmp_path))
    assert "structured.calibration.data" in str(error.value)
