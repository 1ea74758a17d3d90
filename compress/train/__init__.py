"""One training loop (Hugging Face accelerate) shared by the steps that train: finetune and distill."""

from compress.train.batches import LengthGroupedBatches, forward_inputs, pad_collate, tokenize_rows
from compress.train.loop import TrainResult, train
from compress.train.settings import TrainSettings

__all__ = [
    "LengthGroupedBatches",
    "TrainResult",
    "TrainSettings",
    "forward_inputs",
    "pad_collate",
    "tokenize_rows",
    "train",
]
