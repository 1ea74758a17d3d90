"""ONNX export: torch.onnx with dynamic batch and sequence axes, checked, optionally optimized and INT8.

The artifact runs in ONNX Runtime (compress.runtime.onnxruntime) and anywhere else that reads ONNX.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveInt

from compress.errors import ConfigError, ExportError
from compress.export.base import ExportConfig, Exporter, options_for, read_metadata, write_metadata
from compress.export.deploy import sample_io, write_deploy_notes
from compress.export.onnx_padding import unpad_graph
from compress.export.onnx_quantize import (
    CalibrationMethod,
    calibration_feeds,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from compress.export.tracing import (
    LogitsOnly,
    example_inputs,
    inference_max_length,
    onnx_input_names,
    reject_torch_int8,
)
from compress.models.handle import ModelHandle
from compress.optional import import_optional
from compress.runtime.base import Runtime, RuntimeOptions
from compress.steps.base import StageContext
from compress.tasks import get_task

MODEL_FILE = "model.onnx"
# Encoder families whose graphs ONNX Runtime's transformer optimizer fuses (attention, layer norm, GELU).
OPTIMIZABLE_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet"}
# ONNX files above this size must keep their weights in a separate file (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


class OnnxConfig(ExportConfig):
    opset: int = Field(17, ge=14, le=21, description="ONNX opset version of the exported graph.")
    optimize: bool | None = Field(
        None,
        description="Fuse attention, layer norm and GELU with ONNX Runtime's transformer optimizer; "
        "default: on for BERT-family encoders (off for decoders and with `quantize: static`).",
    )
    quantize: Literal["none", "dynamic", "static"] = Field(
        "none",
        description="INT8 with ONNX Runtime: `dynamic` (int8 weights, activation scales per batch; no data "
        "needed) or `static` (activation scales calibrated on your data, Q/DQ format).",
    )
    per_channel: bool = Field(True, description="One weight scale per output channel (more accurate).")
    calibration_samples: PositiveInt = Field(
        128, description="Calibration rows for `quantize: static`, taken from the calibration split."
    )
    calibration_method: CalibrationMethod = Field(
        "minmax", description="How static quantization turns calibration activations into ranges."
    )
    op_types_to_quantize: list[str] | None = Field(
        None,
        description="ONNX op types to quantize; default: ONNX Runtime's choice for `dynamic`, `[MatMul]` for "
        "`static` (quantizing Add/Gather too costs accuracy for little speed).",
    )
    remove_padding: bool | None = Field(
        None,
        description="Run the token-by-token layers (projections, feed-forward, layer norms) on the batch's real "
        "tokens only: the graph drops the padding positions after the embeddings and puts them back only for "
        "attention and the pooler. Same logits, fewer FLOPs on padded batches. Default: on where it applies "
        "(an optimized BERT-family classifier graph with fused embedding and attention ops, right padding).",
    )


class OnnxExporter(Exporter):
    """ONNX graph for ONNX Runtime (FP32, or INT8 dynamic/static)."""

    name: ClassVar[str] = "onnx"
    Config = OnnxConfig
    config: OnnxConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        where = f"exports.{self.label}"
        optimize = resolve_optimize(model, self.config.optimize, self.config.quantize, where)
        try_unpadding = resolve_remove_padding(model, self.config.remove_padding, optimize, self.config.quantize, where)
        import_optional("onnxruntime", "onnx")  # fail before the slow conversion when it is missing
        unpadded = False
        with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix=".onnx-export-") as tmp:
            graph = Path(tmp) / MODEL_FILE
            input_names = torch_to_onnx(model, graph, opset=self.config.opset, where=where)
            if optimize:
                graph = optimize_transformer(model, graph, Path(tmp) / "optimized.onnx", where=where)
            if try_unpadding:
                unpadded = remove_padding(graph, Path(tmp) / "unpadded.onnx")
                if unpadded:
                    graph = Path(tmp) / "unpadded.onnx"
                elif self.config.remove_padding:
                    raise ConfigError(
                        "the optimized graph has no fused EmbedLayerNormalization and Attention ops to drop the "
                        "padding around (e.g. a model whose attention heads were pruned stays unfused)",
                        where=f"{where}.remove_padding",
                        fix="set `remove_padding: false` (or leave it unset)",
                    )
            target = out_dir / MODEL_FILE
            if self.config.quantize == "dynamic":
                quantize_onnx_dynamic(
                    graph, target, per_channel=self.config.per_channel,
                    op_types=self.config.op_types_to_quantize,
                )  # fmt: skip
            elif self.config.quantize == "static":
                feeds = calibration_feeds(
                    ctx.calibration_data(self.config.calibration_samples),
                    model.tokenizer,
                    input_names,
                    inference_max_length(model, ctx),
                    same_length=self.config.calibration_method != "minmax",
                )
                quantize_onnx_static(
                    graph,
                    target,
                    feeds,
                    per_channel=self.config.per_channel,
                    method=self.config.calibration_method,
                    op_types=self.config.op_types_to_quantize or ["MatMul"],
                    symmetric=False,
                )
            else:
                save_onnx(graph, target)
        check_onnx(target, where)
        precision = "float32" if self.config.quantize == "none" else f"int8-{self.config.quantize}"
        write_metadata(
            model, out_dir, format="onnx", model_file=MODEL_FILE, input_names=input_names,
            precision=precision, optimized=optimize, opset=self.config.opset, remove_padding=unpadded,
        )  # fmt: skip
        write_deploy_notes(out_dir, f"ONNX model ({precision})", ort_sample(model), self._notes(optimize, unpadded))

    def _notes(self, optimized: bool, unpadded: bool = False) -> list[str]:
        notes = [
            "Inputs are int64 tensors of shape (batch, sequence); both axes are dynamic.",
            "Install the runtime with `pip install onnxruntime` (or `onnxruntime-gpu` for CUDA).",
        ]
        if optimized:
            notes.append(
                "The graph uses ONNX Runtime's fused transformer ops (com.microsoft domain): run it in ONNX "
                "Runtime, or export with `optimize: false` for a plain ONNX graph."
            )
        if unpadded:
            notes.append("The graph runs its token-by-token layers on the real (attention_mask = 1) tokens only; "
                         "pad on the right, as the saved tokenizer does.")  # fmt: skip
        if self.config.quantize == "dynamic":
            notes.append("Dynamic INT8: activation scales are computed per batch, so logits vary slightly "
                         "with what else is in the batch.")  # fmt: skip
        if self.config.quantize == "static":
            notes.append(f"Static INT8 (Q/DQ), calibrated on {self.config.calibration_samples} rows with "
                         f"{self.config.calibration_method}.")  # fmt: skip
        return notes

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_onnx(artifact_dir, options_for(ctx))


def open_onnx(artifact_dir: Path, options: RuntimeOptions, model_file: str | None = None) -> Runtime:
    from transformers import AutoTokenizer

    from compress.runtime.onnxruntime import OnnxRuntime

    meta = read_metadata(artifact_dir)
    return OnnxRuntime(
        artifact_dir / (model_file or meta["model_file"]),
        AutoTokenizer.from_pretrained(artifact_dir),
        meta["task"],
        meta["max_length"],
        threads=options.threads,
        device=options.device,
        precision=meta.get("precision", "float32"),
    )


def torch_to_onnx(model: ModelHandle, path: Path, *, opset: int, where: str) -> list[str]:
    """Trace the model into `path` with dynamic batch and sequence axes; return the graph's input names."""
    import_optional("onnx", "onnx")
    reject_torch_int8(
        model, where, converter="torch.onnx", fix="set `quantize: dynamic` (onnx) or `precision: int8` (tensorrt)"
    )
    input_names = onnx_input_names(model)
    module = model.model
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    was_training = module.training
    wrapper = LogitsOnly(module, input_names, model.task).eval()  # export restores the wrapper's mode: keep eval
    inputs = tuple(t.to(device) for t in example_inputs(model, input_names))
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes["logits"] = dict(get_task(model.task).logits_axes)
    try:
        with warnings.catch_warnings(), torch.no_grad(), eager_attention(module):
            warnings.simplefilter("ignore")  # tracer warnings about Python bools in HF's mask code
            torch.onnx.export(
                wrapper, inputs, str(path), input_names=input_names, output_names=["logits"],
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )  # fmt: skip
    except Exception as exc:
        raise ExportError(
            f"torch.onnx could not convert {describe_failure(exc)}",
            where=where,
            fix="try another `opset`, or remove the step that introduced this op before the export",
        ) from exc
    finally:
        module.train(was_training)
    return input_names


@contextlib.contextmanager
def eager_attention(module: torch.nn.Module) -> Iterator[None]:
    """Trace eager attention, which ORT's optimizer fuses into one Attention op (SDPA's graph it cannot)."""
    setter = getattr(module, "set_attn_implementation", None)
    current = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if setter is None or current in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(current)


def describe_failure(exc: Exception) -> str:
    """Name the unsupported op when torch.onnx says which one it is."""
    match = re.search(r"operator '([\w:.]+)'", str(exc))
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the op '{match.group(1)}': {first_line}" if match else f"the model: {first_line}"


def resolve_optimize(model: ModelHandle, requested: bool | None, quantize: str, where: str) -> bool:
    model_type = getattr(getattr(model.model, "config", None), "model_type", None)
    supported = model_type in OPTIMIZABLE_TYPES
    if requested and not supported:
        raise ConfigError(
            f"ONNX Runtime's transformer optimizer supports BERT-family encoders, not '{model_type}'",
            where=f"{where}.optimize",
            fix="set `optimize: false` (or leave it unset)",
        )
    if requested and quantize == "static":
        # The fused ops carry no type information, so the static quantizer would skip their activations.
        raise ConfigError(
            "static INT8 cannot calibrate the optimizer's fused ops (Attention, SkipLayerNormalization)",
            where=f"{where}.optimize",
            fix="leave `optimize` unset with `quantize: static` (ONNX Runtime fuses the Q/DQ graph itself), "
            "or use `quantize: dynamic`",
        )
    return supported and quantize != "static" if requested is None else requested


def resolve_remove_padding(
    model: ModelHandle, requested: bool | None, optimize: bool, quantize: str, where: str
) -> bool:
    """Whether to try dropping the padding (whether the graph allows it is known after fusion); ConfigError when
    `remove_padding: true` cannot apply."""
    field = f"{where}.remove_padding"
    reasons = [
        (quantize == "static", "remove_padding works on the optimizer's fused graph, which static INT8 cannot "
         "calibrate", "use `quantize: dynamic`, or set `remove_padding: false`"),
        (not optimize, "remove_padding needs the transformer optimizer's fused graph",
         "leave `optimize` on (unset, for BERT-family encoders), or set `remove_padding: false`"),
        (model.task != "text-classification", f"remove_padding keeps a classifier's pooled logits exact, not "
         f"{model.task} outputs", "set `remove_padding: false`"),
        (getattr(model.tokenizer, "padding_side", "right") != "right", "remove_padding needs right padding (the "
         "pooler reads position 0, a pad under left padding)",
         "set the tokenizer's `padding_side` to 'right', or set `remove_padding: false`"),
    ]  # fmt: skip
    for applies, message, fix in reasons:
        if applies:
            if requested:
                raise ConfigError(message, where=field, fix=fix)
            return False
    return requested is not False


def remove_padding(source: Path, target: Path) -> bool:
    """`source` with its padding removed (`compress.export.onnx_padding`) saved to `target`; False if it cannot."""
    onnx = import_optional("onnx", "onnx")
    proto = onnx.load(str(source))
    if not unpad_graph(proto):
        return False
    save_onnx_proto(proto, target)
    return True


def optimize_transformer(model: ModelHandle, source: Path, target: Path, *, where: str) -> Path:
    """Fuse attention, layer norm and GELU (ORT's transformer optimizer, model_type bert); return `target`.

    The fused Attention op takes one head count for the whole graph, from the config. A model whose layers lost
    heads (structured pruning) has fewer, possibly different per layer: fusing it would silently split the
    attention into the wrong heads, so its attention stays unfused (layer norm and GELU still fuse).
    """
    import_optional("onnxruntime", "onnx")
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    config = model.model.config
    heads = getattr(config, "num_attention_heads", getattr(config, "n_heads", 0))
    hidden = getattr(config, "hidden_size", getattr(config, "dim", 0))
    options = FusionOptions("bert")
    options.enable_attention = not _heads_pruned(model.model, heads)
    try:
        optimized = optimizer.optimize_model(
            str(source),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            optimization_options=options,
            use_gpu=False,
        )
        optimized.save_model_to_file(str(target))
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime's transformer optimizer failed: {exc}", where=f"{where}.optimize",
            fix="set `optimize: false`",
        ) from exc  # fmt: skip
    return target


def _heads_pruned(network: object, config_heads: int) -> bool:
    """Whether some layer has fewer query heads than the config says (a `structured`-pruned model)."""
    from compress.architectures.blocks import BLOCKS
    from compress.steps.prune.structured import layer_widths

    if getattr(getattr(network, "config", None), "model_type", None) not in BLOCKS:
        return False
    return any(heads != config_heads for heads in layer_widths(network)["query_heads"])


def save_onnx(source: Path, target: Path) -> None:
    """Copy a graph into the artifact; weights go to one `<name>.data` file when protobuf cannot hold them."""
    onnx = import_optional("onnx", "onnx")
    save_onnx_proto(onnx.load(str(source)), target)


def save_onnx_proto(proto: Any, target: Path) -> None:
    onnx = import_optional("onnx", "onnx")
    large = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    onnx.save(proto, str(target), save_as_external_data=large, all_tensors_to_one_file=True,
              location=f"{target.name}.data")  # fmt: skip


def check_onnx(path: Path, where: str) -> None:
    onnx = import_optional("onnx", "onnx")
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph {path.name} is not valid ONNX: {exc}", where=where) from exc


def ort_sample(model: ModelHandle, model_file: str = MODEL_FILE) -> str:
    """A runnable ONNX Runtime snippet for this artifact."""
    text, post, max_length = sample_io(model)
    return f"""\
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

artifact = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(artifact)
session = ort.InferenceSession(f"{{artifact}}/{model_file}", providers=["CPUExecutionProvider"])
batch = tokenizer({text}, padding=True, truncation=True, max_length={max_length}, return_tensors="np")
feed = {{i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}}
logits = session.run(["logits"], feed)[0]
{post}
"""
