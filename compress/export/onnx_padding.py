"""Padding removal for ONNX Runtime's fused BERT graph: the token-wise layers run on the batch's real tokens only.

Under dynamic padding about half of an SST-2 batch's positions are padding, and every projection, feed-forward
layer and layer norm computes them anyway. The rewrite gathers the real tokens once after the embeddings and after
each attention, and rebuilds the padded layout only where an op needs it (attention, the pooler): the same logits,
fewer FLOPs. `compress.export.onnx` applies it (`remove_padding`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Ops that compute each token's output from that token's input alone (in ORT's fused BERT graph): they may run on
# the real tokens only. Anything else (attention, the pooler's Gather, ...) sees the padded (batch, sequence) layout.
TOKEN_WISE_OPS = {"MatMul", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization"}
# Fused ops whose (batch, sequence, hidden) output the token-wise ops downstream read.
PADDED_SOURCES = {"EmbedLayerNormalization", "Attention"}


def unpad_graph(proto: Any) -> bool:
    """Rewrite ORT's fused BERT graph (an `onnx.ModelProto`, in place) so that its token-wise ops run on the real
    tokens only; False, and the graph untouched, if it cannot.

    The real positions (`attention_mask` = 1, flattened over batch × sequence) are gathered into a (tokens,
    hidden) tensor after the embeddings and after every Attention; the token-wise ops run on that; before each
    other op (the next Attention, the pooler) a Gather restores the (batch, sequence, hidden) layout. Padded
    positions then hold a copy of a real token's state instead of their own: attention masks them as keys and
    nothing reads them as queries, so a classifier's logits are unchanged (with right padding, where the pooled
    position 0 is real). Needs the fused graph (EmbedLayerNormalization, Attention) and an `attention_mask` input.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    op_types = {n.op_type for n in graph.node}
    if not PADDED_SOURCES.issubset(op_types) or "attention_mask" not in {i.name for i in graph.input}:
        return False
    weights = {t.name: t for t in graph.initializer}
    for name, value in (("rp/minus_one", [-1]), ("rp/zero", 0), ("rp/one", 1)):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
    nodes = [
        # idx: the real positions in the flattened batch; back: for every position, the row of it (or, for a
        # pad, of the real token before it, clipped at 0) in the packed tensor.
        helper.make_node("Reshape", ["attention_mask", "rp/minus_one"], ["rp/mask"]),
        helper.make_node("NonZero", ["rp/mask"], ["rp/nonzero"]),
        helper.make_node("Reshape", ["rp/nonzero", "rp/minus_one"], ["rp/idx"]),
        helper.make_node("CumSum", ["rp/mask", "rp/zero"], ["rp/count"]),
        helper.make_node("Sub", ["rp/count", "rp/one"], ["rp/last"]),
        helper.make_node("Max", ["rp/last", "rp/zero"], ["rp/back"]),
        helper.make_node("Shape", ["attention_mask"], ["rp/batch_sequence"]),
        helper.make_node("Concat", ["rp/batch_sequence", "rp/minus_one"], ["rp/padded_shape"], axis=0),
    ]
    packed: dict[str, str] = {}  # tensor → its (tokens, ...) form
    padded: dict[str, str] = {}  # tensor that exists packed → its (batch, sequence, ...) form

    def restore(name: str) -> str:
        if name not in padded:
            padded[name] = f"{name}/padded"
            nodes.extend([
                helper.make_node("Gather", [packed[name], "rp/back"], [f"{name}/padded_flat"], axis=0),
                helper.make_node("Reshape", [f"{name}/padded_flat", "rp/padded_shape"], [padded[name]]),
            ])  # fmt: skip
        return padded[name]

    for node in graph.node:
        activations = [i for i in node.input if i and i not in weights]
        if _token_wise(node, activations, packed, weights):
            outputs = [f"{o}/packed" if o else "" for o in node.output]  # "" is an omitted optional output
            clone = helper.make_node(node.op_type, [packed.get(i, i) for i in node.input], outputs, name=node.name,
                                     domain=node.domain)  # fmt: skip
            clone.attribute.extend(node.attribute)
            nodes.append(clone)
            packed.update((o, p) for o, p in zip(node.output, outputs, strict=True) if o)
            continue
        inputs = [restore(i) if i in packed else i for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        nodes.append(node)
        if node.op_type in PADDED_SOURCES:
            out = node.output[0]
            packed[out], padded[out] = f"{out}/packed", out
            nodes += [
                helper.make_node("Flatten", [out], [f"{out}/flat"], axis=2),
                helper.make_node("Gather", [f"{out}/flat", "rp/idx"], [packed[out]], axis=0),
            ]
    for output in graph.output:
        if output.name in packed and restore(output.name) != output.name:
            nodes.append(helper.make_node("Identity", [padded[output.name]], [output.name]))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes of the rewritten tensors changed; ORT infers them at load
    return True


def _token_wise(node: Any, activations: list[str], packed: dict[str, str], weights: dict[str, Any]) -> bool:
    """Whether `node` can run on packed tokens: a token-wise op whose activation inputs are all packed."""
    if node.op_type not in TOKEN_WISE_OPS or not activations or not all(i in packed for i in activations):
        return False
    if node.op_type == "MatMul":  # activations × a constant 2-D weight, not a batched product of activations
        return len(node.input) == 2 and node.input[1] in weights and len(weights[node.input[1]].dims) == 2
    if node.op_type == "LayerNormalization":  # over the last (hidden) axis only
        return all(a.i == -1 for a in node.attribute if a.name == "axis")
    return True
