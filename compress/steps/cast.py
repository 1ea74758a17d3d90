"""Cast weights to half precision (FP16 or BF16): half the size, and faster on GPUs with tensor cores."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CastConfig(StepConfig):
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16",
        description="Target dtype of every floating-point weight. FP16 on CPU is slow: use it on GPU.",
    )


class Cast(Step):
    """Cast floating-point weights to FP16/BF16."""

    name: ClassVar[str] = "cast"
    Config = CastConfig
    config: CastConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        if any(t["name"] == "dynamic_int8" for t in model.transforms):
            raise ConfigError(
                "cannot cast a dynamic-INT8 model", where="steps.cast", fix="put `cast` before `dynamic_int8`"
            )
        return model.replace(model=model.model.to(DTYPES[self.config.dtype]))  # in place: Module.to returns it
