"""Converters that coremltools' TorchScript frontend lacks (or gets wrong) for recent torch / transformers.

coremltools is tested against torch ≤ 2.7; Hugging Face models traced with newer releases hit two gaps:

- `aten::new_ones`: transformers' mask builder (`masking_utils.and_masks`) starts from
  `q_idx.new_ones((), dtype=torch.bool)`, which coremltools has no converter for.
- `aten::Int` / `aten::Bool` on a constant 1-element tensor: coremltools calls `int(array)`, which NumPy 2
  rejects for arrays with a dimension ("only 0-dimensional arrays can be converted to Python scalars").

The converters are installed only for the duration of one conversion and the registry is restored after, so
other coremltools users in the process see its stock behaviour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def _new_ones(context: Any, node: Any) -> None:
    """tensor.new_ones(size, dtype=…): a constant for the scalar case, a `fill` for any other shape."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import NUM_TO_NUMPY_DTYPE, _get_inputs
    from coremltools.converters.mil.mil import types

    inputs = _get_inputs(context, node)
    size = inputs[1]
    dtype_var = inputs[2] if len(inputs) > 2 else None
    dtype = np.float32
    if dtype_var is not None and dtype_var.val is not None:
        dtype = NUM_TO_NUMPY_DTYPE[int(dtype_var.val)]
    if dtype != np.bool_ and np.issubdtype(dtype, np.integer):
        dtype = np.int32  # Core ML tensors hold int32, not int64
    if isinstance(size, list):
        size = mb.concat(values=size, axis=0) if size else None
    if size is None or (size.val is not None and np.asarray(size.val).size == 0):
        context.add(mb.const(val=np.array(1, dtype=dtype), name=node.name))
        return
    if types.is_float(size.dtype):  # sizes computed through float math (as torch allows)
        size = mb.cast(x=size, dtype="int32")
    context.add(mb.fill(shape=size, value=dtype(1), name=node.name))


def _scalar_cast(python_type: type, mil_dtype: str) -> Callable[[Any, Any], None]:
    """aten::Int / aten::Bool that also folds 1-element constant arrays (NumPy 2 safe)."""

    def convert(context: Any, node: Any) -> None:
        from coremltools.converters.mil import Builder as mb
        from coremltools.converters.mil.frontend.torch.ops import _get_inputs

        (x,) = _get_inputs(context, node, expected=1)
        if x.can_be_folded_to_const():
            value = np.asarray(x.val)
            if value.size != 1:
                raise ValueError(f"aten::{python_type.__name__} needs one value, got shape {value.shape}")
            context.add(mb.const(val=python_type(value.reshape(()).item()), name=node.name))
            return
        if len(x.shape) > 0:
            x = mb.squeeze(x=x, name=node.name + "_item")
        context.add(mb.cast(x=x, dtype=mil_dtype, name=node.name))

    return convert


def fixed_converters() -> dict[str, Callable[[Any, Any], None]]:
    """Registry name → converter; `_int`/`_bool` are coremltools' own names for aten::Int and aten::Bool."""
    return {
        "new_ones": _new_ones,
        "int": _scalar_cast(int, "int32"),
        "_int": _scalar_cast(int, "int32"),
        "bool": _scalar_cast(bool, "bool"),
        "_bool": _scalar_cast(bool, "bool"),
    }


@contextlib.contextmanager
def patched_torch_frontend() -> Iterator[None]:
    """Install the converters above for one `coremltools.convert` call; restore the registry afterwards."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    mapping = _TORCH_OPS_REGISTRY.name_to_func_mapping
    saved = {name: mapping.get(name) for name in fixed_converters()}
    mapping.update(fixed_converters())
    try:
        yield
    finally:
        for name, func in saved.items():
            if func is None:
                mapping.pop(name, None)
            else:
                mapping[name] = func
