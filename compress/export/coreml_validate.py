"""Check a saved .mlpackage from its spec alone, which works on any OS (running it needs macOS).

What is checked: it is an ML Program; its inputs have the expected names, int32 type and flexible
(batch, sequence) ranges; `logits` is a float32 output whose last dimension is the number of labels (or the
vocabulary); weight-compressed packages really hold compressed (constexpr) weights.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from compress.errors import ExportError
from compress.optional import import_optional

# MIL ops that hold compressed weights and expand them at load time.
COMPRESSED_WEIGHT_OPS = {
    "constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale",
}  # fmt: skip


def load_spec(package: Path) -> Any:
    ct = import_optional("coremltools", "coreml")
    return ct.models.MLModel(str(package), skip_model_load=True).get_spec()


def validate_package(
    package: Path,
    *,
    input_names: list[str],
    max_batch_size: int,
    max_length: int,
    logits_width: int,
    compressed: bool,
) -> dict[str, Any]:
    """Raise ExportError naming the first mismatch; return a summary (op counts, output dims) otherwise."""
    spec = load_spec(package)
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, not mlProgram")
    inputs = {i.name: i.type.multiArrayType for i in spec.description.input}
    if list(inputs) != input_names:
        problems.append(f"inputs are {list(inputs)}, expected {input_names}")
    for name, array in inputs.items():
        if array.dataType != array.INT32:
            problems.append(f"input {name} is not int32")
        ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
        if ranges != [(1, max_batch_size), (1, max_length)]:
            problems.append(f"input {name} accepts shapes {ranges}, expected [(1, {max_batch_size}), (1, "
                            f"{max_length})]")  # fmt: skip
    outputs = {o.name: o.type.multiArrayType for o in spec.description.output}
    if list(outputs) != ["logits"] or outputs["logits"].dataType != outputs["logits"].FLOAT32:
        problems.append(f"outputs are {list(outputs)}, expected one float32 `logits`")
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ops = collections.Counter(op.type for op in block.operations)
    dims = output_dims(block, "logits")
    if dims and dims[-1] != logits_width:
        problems.append(f"logits end in {dims[-1]}, expected {logits_width}")
    compressed_ops = sum(ops[name] for name in COMPRESSED_WEIGHT_OPS)
    if compressed and not compressed_ops:
        problems.append("no compressed weights (constexpr ops) in the program")
    if problems:
        raise ExportError(
            f"the Core ML package {package.name} failed validation: " + "; ".join(problems),
            fix="this is a bug in the coreml exporter or coremltools; please report it with the model name",
        )
    return {"opset": function.opset, "logits_dims": dims, "compressed_weight_ops": compressed_ops,
            "ops": dict(ops.most_common())}  # fmt: skip


def output_dims(block: Any, name: str) -> list[int | None]:
    """The output's dims from the op that produces it: an int, or None where the size is flexible."""
    for op in block.operations:
        for out in op.outputs:
            if out.name == name:
                return [d.constant.size if d.WhichOneof("dimension") == "constant" else None
                        for d in out.type.tensorType.dimensions]  # fmt: skip
    return []
