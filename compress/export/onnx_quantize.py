"""INT8 quantization of an ONNX graph with ONNX Runtime's quantization tools.

Dynamic INT8 stores weights as int8 and computes activation scales per batch at run time (no calibration).
Static INT8 fixes activation scales from calibration batches and writes explicit QuantizeLinear /
DequantizeLinear (Q/DQ) pairs; with `symmetric=True` every zero point is 0, the form TensorRT requires.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData
from compress.errors import DataError
from compress.optional import import_optional

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
Feed = dict[str, np.ndarray]

CALIBRATION_BATCH_SIZE = 8


def quantize_onnx_dynamic(source: Path, target: Path, *, per_channel: bool, op_types: list[str] | None = None) -> None:
    """Dynamic INT8 (int8 weights, activation scales computed per batch) of `source` into `target`."""
    onnx = import_optional("onnx", "onnx")
    quantization = import_optional("onnxruntime.quantization", "onnx")
    quantization.quantize_dynamic(
        str(source),
        str(target),
        per_channel=per_channel,
        weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=op_types,
        # The transformer optimizer's fused ops (Attention, SkipLayerNormalization) carry no type information
        # for ORT's quantizer; without a default it refuses to quantize them.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_onnx_static(
    source: Path,
    target: Path,
    calibration: list[Feed],
    *,
    per_channel: bool,
    method: CalibrationMethod,
    op_types: list[str],
    symmetric: bool,
    progress: bool = True,
) -> None:
    """Static INT8 in Q/DQ format: activation ranges come from running `calibration` through the FP32 graph.

    `symmetric` makes activations signed int8 with zero point 0 (TensorRT's requirement); otherwise they are
    uint8 with a zero point, which suits ONNX Runtime's CPU kernels.
    """
    onnx = import_optional("onnx", "onnx")
    quantization = import_optional("onnxruntime.quantization", "onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference fails on transformer graphs with dynamic axes; ONNX's own shape
        # inference is enough for the quantizer.
        quant_pre_process(str(source), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared),
            str(target),
            FeedReader(calibration, progress=progress),
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            activation_type=quantization.QuantType.QInt8 if symmetric else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={
                "ActivationSymmetric": symmetric,
                "WeightSymmetric": True,
                # Outputs of the optimizer's fused ops have no inferred type; they are all float.
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )


class FeedReader:
    """ORT's CalibrationDataReader protocol over a list of ready-made feeds (duck-typed: `get_next`)."""

    def __init__(self, feeds: list[Feed], progress: bool = True) -> None:
        self._bar = tqdm(total=len(feeds), desc="calibrating", unit="batch", disable=not progress)
        self._feeds: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        feed = next(self._feeds, None)
        if feed is None:
            self._bar.close()
        else:
            self._bar.update()
        return feed

    def __iter__(self) -> Iterator[Feed]:
        return self

    def __next__(self) -> Feed:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def calibration_feeds(
    data: TextData,
    tokenizer: PreTrainedTokenizerBase,
    input_names: list[str],
    max_length: int,
    batch_size: int = CALIBRATION_BATCH_SIZE,
    *,
    same_length: bool = False,
) -> list[Feed]:
    """Tokenize calibration texts the way the evaluator does, into int64 batches of the graph's inputs.

    `same_length` pads every batch to the longest row of all: ORT's histogram calibrators (entropy,
    percentile) stack the activations of all batches, so their shapes must agree.
    """
    from compress.evaluate.batching import tokenize_batches

    batches = tokenize_batches(tokenizer, data, batch_size, max_length)
    feeds = [select_inputs(batch.inputs, input_names) for batch in batches]
    if same_length and feeds:
        longest = max(feed["input_ids"].shape[1] for feed in feeds)
        pad_id = tokenizer.pad_token_id or 0
        feeds = [
            {name: _pad_right(a, longest, pad_id if name == "input_ids" else 0) for name, a in feed.items()}
            for feed in feeds
        ]
    return feeds


def _pad_right(array: np.ndarray, length: int, value: int) -> np.ndarray:
    return np.pad(array, ((0, 0), (0, length - array.shape[1])), constant_values=value)


def select_inputs(batch: Mapping[str, np.ndarray], input_names: list[str]) -> Feed:
    """The graph's inputs from a tokenizer batch, as int64 (a missing token_type_ids is all zeros)."""
    feed = {}
    for name in input_names:
        if name in batch:
            feed[name] = np.asarray(batch[name], dtype=np.int64)
        elif name == "token_type_ids":
            feed[name] = np.zeros_like(np.asarray(batch["input_ids"], dtype=np.int64))
        else:
            raise DataError(
                f"the batch has no '{name}', which the ONNX graph takes as input",
                fix="tokenize with the tokenizer saved next to the model",
            )
    return feed
