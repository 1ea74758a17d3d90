"""Everything evaluable is a Runtime: a PyTorch model, an ONNX file in ONNX Runtime, an OpenVINO IR, …

The evaluator knows only this interface, so evaluating every stage (steps and exports alike) is one loop,
and a new backend is one new file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.errors import DataError


class Runtime(ABC):
    """Runs tokenized batches and returns logits as float32 numpy arrays.

    Text classification: logits of shape (batch, num_labels). Causal LM: (batch, seq, vocab).
    Inputs are int64 arrays named as the tokenizer names them (input_ids, attention_mask, token_type_ids);
    a runtime uses those its model takes and ignores the rest.
    """

    name: str = "runtime"  # e.g. "pytorch", "onnxruntime", "openvino"
    device: str = "cpu"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length

    @abstractmethod
    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits for one batch."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the model takes on disk (weights and graph, not the tokenizer)."""

    def num_parameters(self) -> int | None:
        return None

    def synchronize(self) -> None:  # noqa: B027  (optional hook: CPU runtimes have nothing to wait for)
        """Wait for queued device work, so timings are honest (CUDA runtimes override this)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Free the session or model."""

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device}


def graph_inputs(
    batch: Mapping[str, np.ndarray], input_names: list[str], model_name: str, dtype: type = np.int64
) -> dict[str, np.ndarray]:
    """The arrays an exported graph takes, in its dtype; single-segment inputs get all-zero token_type_ids,
    as the tokenizer would give."""
    feed = {}
    for name in input_names:
        if name in batch:
            feed[name] = np.ascontiguousarray(batch[name], dtype=dtype)
        elif name == "token_type_ids":
            feed[name] = np.zeros(np.shape(batch["input_ids"]), dtype=dtype)
        else:
            raise DataError(
                f"the batch has no '{name}', which {model_name} takes as input",
                fix="tokenize with the tokenizer saved next to the model",
            )
    return feed
