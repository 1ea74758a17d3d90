"""The `structured` step: heads (GQA groups), neurons and layers removed from BERT and Llama, per-layer widths
that save and reload, the most important units kept, errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import CALIBRATION, context, logits, probe_ids

from compress.architectures.blocks import BLOCKS, heads_of
from compress.data.text_data import TextData
from compress.errors import ConfigError, ModelError
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.prune.structured import head_group_scores, top_indices
from compress.steps.prune.structured import Structured
from compress.steps.quantize.gptq import GPTQ


def classify(handle: ModelHandle, texts: list[str]) -> torch.Tensor:
    encoded = handle.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return handle.model(**encoded).logits


def test_bert_heads_neurons_and_layers(tiny_bert: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    before = sum(p.numel() for p in tiny_bert.model.parameters())
    step = Structured(heads=0.5, ffn=[0.5, 0.25], drop_layers=[0])
    handle = step.apply(tiny_bert, context(wiki, tmp_path))
    layers = handle.model.bert.encoder.layer
    assert len(layers) == 1 and handle.model.config.num_hidden_layers == 1
    attention = layers[0].attention
    assert attention.self.query.out_features == 16 and attention.output.dense.in_features == 16  # 2 of 4 heads
    assert layers[0].intermediate.dense.out_features == 48  # layer 1 loses a quarter of its 64 neurons
    assert step.details()["query_heads"] == [2] and step.details()["ffn_neurons"] == [48]
    assert step.details()["parameters_after"] < before
    texts = wiki.texts[:4]
    expected = classify(handle, texts)
    save_handle(handle, tmp_path / "stage")
    assert torch.equal(classify(load_handle(tmp_path / "stage"), texts), expected)


def test_llama_keeps_whole_kv_groups_and_unequal_widths(tiny_llama: ModelHandle, wiki: TextData, tmp_path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    handle = Structured(heads=0.5, ffn=[0.25, 0.75]).apply(tiny_llama, context(wiki, tmp_path))
    first, second = handle.model.model.layers
    d = heads_of(handle.model.config).head_dim
    # 4 query heads over 2 key/value heads: one whole group (1 kv head + its 2 query heads) stays per layer.
    assert first.self_attn.k_proj.out_features == d and first.self_attn.q_proj.out_features == 2 * d
    assert first.mlp.gate_proj.out_features == 48 and second.mlp.down_proj.in_features == 16
    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")
    reloaded = load_handle(tmp_path / "stage")
    assert torch.equal(logits(reloaded.model, ids), expected)
    generated = reloaded.model.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)  # the KV cache still fits
    assert generated.shape == (1, 12)


def test_dropped_layers_renumber_the_cache_and_quantize(tiny_llama: ModelHandle, wiki: TextData, tmp_path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    handle = Structured(ffn=0.5, drop_layers=[0]).apply(tiny_llama, context(wiki, tmp_path))
    assert [layer.self_attn.layer_idx for layer in handle.model.model.layers] == [0]
    handle.model.generate(ids[:1, :8], max_new_tokens=3, do_sample=False)
    handle = GPTQ(bits=4, group_size=16, calibration=CALIBRATION).apply(handle, context(wiki, tmp_path))
    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")  # the packed layers are sized from the pruned shapes on reload
    assert torch.equal(logits(load_handle(tmp_path / "stage").model, ids), expected)


def test_the_most_important_group_is_kept(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    layer = tiny_llama.model.model.layers[0]
    heads = heads_of(tiny_llama.model.config)
    with torch.no_grad():
        layer.self_attn.v_proj.weight[heads.head_dim :] *= 10  # key/value group 1 now dominates
    assert top_indices(head_group_scores(layer, BLOCKS["llama"], heads), 1).tolist() == [1]
    kept_values = layer.self_attn.v_proj.weight[heads.head_dim :].clone()
    Structured(heads=0.5).apply(tiny_llama, context(wiki, tmp_path))
    assert torch.equal(tiny_llama.model.model.layers[0].self_attn.v_proj.weight, kept_values)


def test_bad_settings_fail_before_work(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    from compress.recipe import Recipe

    shapes = {n: p.shape for n, p in tiny_llama.model.named_parameters()}
    for step, where in [
        (Structured(drop_layers=[0, 1]), "structured.drop_layers"),
        (Structured(drop_layers=[5]), "structured.drop_layers"),
        (Structured(ffn=[0.5, 0.5, 0.5]), "structured.ffn"),
    ]:
        with pytest.raises(ConfigError) as error:
            step.apply(tiny_llama, context(wiki, tmp_path))
        assert error.value.where == where
    assert {n: p.shape for n, p in tiny_llama.model.named_parameters()} == shapes
    with pytest.raises(ConfigError) as error:
        steps = [{"structured": {"heads": 1}}]
        Recipe.from_dict({"model": {"source": "x", "task": "causal-lm"}, "data": {"path": "e"}, "steps": steps})
    assert "steps[0].structured.heads" in str(error.value)
    tiny_llama.model.config.model_type = "gpt2"
    with pytest.raises(ModelError, match="no structured-pruning block map"):
        Structured(ffn=0.5).apply(tiny_llama, context(wiki, tmp_path))


def test_distill_recovers_a_pruned_student_that_reloads(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    from train_helpers import accuracy, make_context

    from compress.steps.distill.step import Distill
    from compress.steps.finetune import Finetune

    ctx = make_context(sst2_train, sst2_dev, tmp_path / "finetune")
    teacher = Finetune(epochs=6, learning_rate=3e-3, batch_size=16, progress=False).apply(tiny_bert, ctx)
    teacher_accuracy = accuracy(teacher, sst2_train)
    step = Distill(student={"structured": {"heads": 0.5, "ffn": [0.25, 0.75]}}, epochs=3, learning_rate=3e-3)
    step.config.progress = False
    student = step.apply(teacher, make_context(sst2_train, sst2_dev, tmp_path / "distill"))
    layers = student.model.bert.encoder.layer
    assert [layer.intermediate.dense.out_features for layer in layers] == [48, 16]
    assert all(layer.attention.self.query.out_features == 16 for layer in layers)
    assert accuracy(student, sst2_train) > teacher_accuracy - 0.1
    texts = sst2_dev.texts[:4]
    save_handle(student, tmp_path / "stage")
    assert torch.equal(classify(load_handle(tmp_path / "stage"), texts), classify(student, texts))
