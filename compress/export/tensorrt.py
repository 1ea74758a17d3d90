"""TensorRT export: a TensorRT-ready ONNX graph (explicit Q/DQ for INT8) and, where possible, the engine.

Building an engine needs the `tensorrt` package and an NVIDIA GPU. Without them the artifact still holds the
ONNX graph and the exact trtexec command that builds the engine on a machine that has them.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from compress.errors import ConfigError, ExportError, NotEvaluable
from compress.export.base import ExportConfig, Exporter, options_for, read_metadata, write_metadata
from compress.export.deploy import write_deploy_notes
from compress.export.onnx import MODEL_FILE, check_onnx, save_onnx, torch_to_onnx
from compress.export.onnx_quantize import CalibrationMethod, calibration_feeds, quantize_onnx_static
from compress.export.tracing import inference_max_length
from compress.io import atomic_write_bytes
from compress.models.handle import ModelHandle
from compress.optional import import_optional
from compress.runtime.base import Runtime, RuntimeOptions
from compress.runtime.tensorrt import tensorrt_unavailable_reason
from compress.steps.base import StageContext

ENGINE_FILE = "model.engine"
DEFAULT_OPT_SEQUENCE = 128
log = logging.getLogger("compress")

Shapes = dict[str, tuple[int, int]]  # "min"/"opt"/"max" → (batch, sequence)


class TensorRTConfig(ExportConfig):
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16",
        description="Engine precision. `int8` writes explicit Q/DQ nodes calibrated on your data (symmetric, "
        "as TensorRT requires); `fp16` sets TensorRT's FP16 flag on the FP32 graph.",
    )
    calibration_samples: PositiveInt = Field(128, description="Calibration rows for `precision: int8`.")
    calibration_method: CalibrationMethod = Field(
        "minmax", description="How INT8 calibration turns activations into ranges."
    )
    opset: int = Field(17, ge=14, le=21, description="ONNX opset version of the graph TensorRT parses.")
    workspace_gb: PositiveFloat = Field(4.0, description="GPU memory TensorRT may use while building (GiB).")
    build_engine: Literal["auto", "always", "never"] = Field(
        "auto",
        description="`auto` builds the engine when `tensorrt` and a GPU are present, else writes only the "
        "ONNX graph and the build command; `always` fails instead; `never` skips the build.",
    )
    min_batch: PositiveInt = Field(1, description="Smallest batch the engine accepts.")
    opt_batch: PositiveInt | None = Field(None, description="Batch TensorRT tunes for; default: the largest "
                                          "evaluation batch size.")  # fmt: skip
    max_batch: PositiveInt | None = Field(None, description="Largest batch; default: the largest evaluation "
                                          "batch size.")  # fmt: skip
    min_sequence: PositiveInt = Field(1, description="Shortest sequence (tokens) the engine accepts.")
    opt_sequence: PositiveInt | None = Field(
        None,
        description=f"Sequence length TensorRT tunes for; default: {DEFAULT_OPT_SEQUENCE} or the maximum.",
    )
    max_sequence: PositiveInt | None = Field(
        None, description="Longest sequence; default: the model's max_length (within its context)."
    )


class TensorRTExporter(Exporter):
    """TensorRT engine (FP32/FP16/INT8 with explicit Q/DQ), built here when a GPU and TensorRT are present."""

    name: ClassVar[str] = "tensorrt"
    Config = TensorRTConfig
    config: TensorRTConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        where = f"exports.{self.label}"
        shapes = self.profile(model, ctx)
        import_optional("onnxruntime", "tensorrt")  # Q/DQ insertion and graph checks use ONNX Runtime's tools
        with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix=".trt-export-") as tmp:
            graph = Path(tmp) / MODEL_FILE
            input_names = torch_to_onnx(model, graph, opset=self.config.opset, where=where)
            if self.config.precision == "int8":
                data = ctx.calibration_data(self.config.calibration_samples)
                feeds = calibration_feeds(
                    data, model.tokenizer, input_names, shapes["max"][1],
                    same_length=self.config.calibration_method != "minmax",
                )  # fmt: skip
                # MatMul only: TensorRT fuses Q/DQ around GEMMs; quantizing Add/Softmax inputs costs accuracy.
                quantize_onnx_static(
                    graph, out_dir / MODEL_FILE, feeds, per_channel=True, symmetric=True,
                    method=self.config.calibration_method, op_types=["MatMul"],
                )  # fmt: skip
            else:
                save_onnx(graph, out_dir / MODEL_FILE)
        check_onnx(out_dir / MODEL_FILE, where)
        command = trtexec_command(input_names, shapes, self.config.precision, self.config.workspace_gb)
        reason = self._build(out_dir, input_names, shapes, where)
        if reason is not None:
            log.warning("%s: the TensorRT engine was not built: %s. Build it with: %s", where, reason, command)
        write_metadata(
            model, out_dir, format="tensorrt", model_file=MODEL_FILE, input_names=input_names,
            precision=self.config.precision, engine_file=ENGINE_FILE if reason is None else None,
            engine_reason=reason, build_command=command, shapes={k: list(v) for k, v in shapes.items()},
        )  # fmt: skip
        write_deploy_notes(
            out_dir, f"TensorRT ({self.config.precision})", trt_sample(), self._notes(reason, command, shapes)
        )

    def _build(self, out_dir: Path, input_names: list[str], shapes: Shapes, where: str) -> str | None:
        """Build the engine when asked and possible; return why it was not built, or None."""
        if self.config.build_engine == "never":
            return "the exporter's config says `build_engine: never`"
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            if self.config.build_engine == "always":
                raise ExportError(
                    f"cannot build the TensorRT engine: {reason}",
                    where=f"{where}.build_engine",
                    fix="run on a machine with an NVIDIA GPU and `pip install tensorrt`, or set "
                    "`build_engine: auto` to write the ONNX graph and build command only",
                )
            return reason
        build_engine(
            out_dir / MODEL_FILE, out_dir / ENGINE_FILE, input_names, shapes,
            precision=self.config.precision, workspace_gb=self.config.workspace_gb, where=where,
        )  # fmt: skip
        return None

    def profile(self, model: ModelHandle, ctx: StageContext) -> Shapes:
        """The engine's min/opt/max (batch, sequence): the config's values, or the evaluation's defaults."""
        cfg = self.config
        largest_batch = max(ctx.eval_spec.batch_sizes)
        max_sequence = cfg.max_sequence or inference_max_length(model, ctx)
        shapes = {
            "min": (cfg.min_batch, cfg.min_sequence),
            "opt": (
                cfg.opt_batch or largest_batch,
                cfg.opt_sequence or min(DEFAULT_OPT_SEQUENCE, max_sequence),
            ),
            "max": (cfg.max_batch or largest_batch, max_sequence),
        }
        for axis, label in ((0, "batch"), (1, "sequence")):
            low, mid, high = (shapes[k][axis] for k in ("min", "opt", "max"))
            if not low <= mid <= high:
                raise ConfigError(
                    f"the engine's {label} range must satisfy min ≤ opt ≤ max, got {low} ≤ {mid} ≤ {high}",
                    where=f"exports.{self.label}.min_{label}",
                    fix=f"set min_{label}, opt_{label} and max_{label} in order",
                )
        return shapes

    def _notes(self, reason: str | None, command: str, shapes: Shapes) -> list[str]:
        built = (
            f"`{ENGINE_FILE}` was built on this machine; engines are specific to the GPU model and TensorRT "
            "version, so rebuild it on the serving machine with the command below if they differ."
            if reason is None
            else f"**The engine was NOT built: {reason}.** Build it where TensorRT and an NVIDIA GPU are "
            "present with the command below."
        )
        notes = [
            built,
            f"Build command (run in this folder): `{command}`",
            f"Shapes the engine accepts (batch, sequence): min {shapes['min']}, opt {shapes['opt']}, "
            f"max {shapes['max']}.",
        ]
        if self.config.precision == "int8":
            notes.append(
                f"`{MODEL_FILE}` has explicit QuantizeLinear/DequantizeLinear nodes (symmetric INT8, "
                f"calibrated on {self.config.calibration_samples} rows): TensorRT needs no calibration file. "
                "The graph also runs in ONNX Runtime."
            )
        return notes

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_tensorrt(artifact_dir, options_for(ctx))


def open_tensorrt(artifact_dir: Path, options: RuntimeOptions) -> Runtime:
    """The built engine (NotEvaluable, with the build command, where none was built or TensorRT is absent)."""
    from transformers import AutoTokenizer

    from compress.runtime.tensorrt import TensorRTRuntime

    meta = read_metadata(artifact_dir)
    command = meta["build_command"]
    if meta.get("engine_file") is None:
        raise NotEvaluable(
            f"TensorRT engine not built: {meta['engine_reason']}; build it with: {command} "
            f"(in {artifact_dir}; see deploy.md)"
        )
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise NotEvaluable(f"the TensorRT engine cannot run here: {reason}; rebuild it where it will run "
                           f"with: {command}")  # fmt: skip
    return TensorRTRuntime(
        artifact_dir / meta["engine_file"],
        AutoTokenizer.from_pretrained(artifact_dir),
        meta["task"],
        meta["max_length"],
        precision=meta["precision"],
    )


def trtexec_command(input_names: list[str], shapes: Shapes, precision: str, workspace_gb: float) -> str:
    """The trtexec invocation that builds the same engine as `build_engine`."""

    def shape_arg(kind: str) -> str:
        batch, sequence = shapes[kind]
        return ",".join(f"{name}:{batch}x{sequence}" for name in input_names)

    args = [
        "trtexec",
        f"--onnx={MODEL_FILE}",
        f"--saveEngine={ENGINE_FILE}",
        f"--minShapes={shape_arg('min')}",
        f"--optShapes={shape_arg('opt')}",
        f"--maxShapes={shape_arg('max')}",
        f"--memPoolSize=workspace:{round(workspace_gb * 1024)}M",
    ]
    if precision in ("fp16", "int8"):
        args.append(f"--{precision}")
    return shlex.join(args)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    input_names: list[str],
    shapes: Shapes,
    *,
    precision: str,
    workspace_gb: float,
    where: str,
) -> None:
    """Parse the ONNX graph with TensorRT, build a serialized engine for the shape profile, and save it."""
    trt = import_optional("tensorrt", "tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # required before TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(
            f"TensorRT cannot parse {onnx_path.name}: {errors}",
            where=where,
            fix="this TensorRT version does not support the op named above; try another `opset` or precision",
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: the graph carries the scales
    profile = builder.create_optimization_profile()
    for name in input_names:
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            "TensorRT could not build the engine (its log above says which layer failed)",
            where=where,
            fix="raise `workspace_gb`, narrow the shape range, or try another precision",
        )
    atomic_write_bytes(engine_path, bytes(serialized))


def _parser_error(error: Any) -> str:
    node = getattr(error, "node_name", lambda: "")()
    op = getattr(error, "node_operator", lambda: "")()
    where = f" (node {node}, op {op})" if node or op else ""
    return f"{error.desc()}{where}"


def trt_sample() -> str:
    """A runnable TensorRT Python snippet (PyTorch CUDA tensors as buffers)."""
    return f"""\
import tensorrt as trt
import torch
from transformers import AutoTokenizer

artifact = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(artifact)
logger = trt.Logger(trt.Logger.WARNING)
with open(f"{{artifact}}/{ENGINE_FILE}", "rb") as f:
    engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
context = engine.create_execution_context()

batch = tokenizer(["a gripping, beautifully made film"], padding=True, return_tensors="pt")
names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
buffers = {{}}
for name in inputs:
    dtype = torch.int64 if engine.get_tensor_dtype(name) == trt.int64 else torch.int32
    buffers[name] = batch[name].to("cuda", dtype)
    context.set_input_shape(name, tuple(buffers[name].shape))
    context.set_tensor_address(name, buffers[name].data_ptr())
logits = torch.empty(tuple(context.get_tensor_shape(output)), dtype=torch.float32, device="cuda")
context.set_tensor_address(output, logits.data_ptr())
stream = torch.cuda.current_stream()
context.execute_async_v3(stream.cuda_stream)
stream.synchronize()
print(logits.argmax(-1))
"""
