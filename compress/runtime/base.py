"""Everything evaluable is a Runtime: a PyTorch model, an ONNX file in ONNX Runtime, an OpenVINO IR, …

The evaluator knows only this interface, so evaluating every stage (steps and exports alike) is one loop,
and a new backend is one new file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.errors import DataError


@dataclass(frozen=True)
class HiddenStates:
    """A causal LM's final hidden states (batch, seq, hidden) and the head that maps them to logits.

    The PyTorch runtime returns this instead of logits when the head alone gives the model's logits, so a
    reduction can apply the head to a few positions at a time and (batch, seq, vocab) logits never exist.
    """

    states: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    width: int  # logits per position (the vocabulary size), so a reduction can size its chunks

    def logits(self) -> torch.Tensor:
        """All logits at once (what the chunked reductions avoid; for tests and small inputs)."""
        with torch.inference_mode():  # the states are inference tensors: autograd must not record the head
            return self.head(self.states)


# What `Runtime.predict` returns: numpy from exported graphs, tensors on the device from PyTorch.
RuntimeOutput = np.ndarray | torch.Tensor | HiddenStates


def as_tensor(outputs: RuntimeOutput) -> torch.Tensor:
    """Any runtime's output as a tensor where it already is (numpy: on the CPU, sharing memory)."""
    if isinstance(outputs, HiddenStates):
        return outputs.logits()
    return torch.as_tensor(outputs)


@dataclass(frozen=True)
class RuntimeOptions:
    """How to open an artifact on this machine: CPU threads (None: the runtime's default), the device, the task
    for a plain transformers folder that does not record one (None: from its architecture), and Core ML's compute
    units (None: those the package was exported for)."""

    threads: int | None = None
    device: str = "cpu"
    task: str | None = None
    compute_units: str | None = None


class Runtime(ABC):
    """Runs tokenized batches and returns the model's outputs, which the task adapter reduces.

    Exported runtimes return float32 numpy logits; the PyTorch runtime returns tensors on its device (and,
    for causal LMs, may return `HiddenStates`) so the reduction runs there and only its result reaches
    the host. Text classification: logits of shape (batch, num_labels). Causal LM: (batch, seq, vocab).
    Inputs are int64 arrays named as the tokenizer names them (input_ids, attention_mask, token_type_ids);
    a runtime uses those its model takes and ignores the rest.
    """

    name: str = "runtime"  # e.g. "pytorch", "onnxruntime", "openvino"
    device: str = "cpu"
    # The first batch of each new shape compiles (seconds): timing first warms one pass over every batch it
    # will time, so no compile lands in a measured batch.
    compiles_per_shape: bool = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length

    @abstractmethod
    def predict(self, batch: Mapping[str, np.ndarray]) -> RuntimeOutput:
        """The outputs for one batch; device work may still be queued (see `synchronize`)."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the model takes on disk (weights and graph, not the tokenizer)."""

    def num_parameters(self) -> int | None:
        return None

    def sparsity(self) -> dict[str, float] | None:
        """Share of zero weights (`compress.prune.sparsity.measure_sparsity`), where the runtime can tell."""
        return None

    def synchronize(self) -> None:  # noqa: B027  (optional hook: CPU runtimes have nothing to wait for)
        """Wait for queued device work, so timings are honest (CUDA runtimes override this)."""

    def generation_speed(self, prompt_ids: np.ndarray, new_tokens: int) -> dict[str, float] | None:
        """Prefill/decode speed for a (1, P) prompt, for runtimes that generate with a KV cache; else None."""
        return None

    def details(self) -> dict[str, Any]:
        """What this runtime chose while opening the stage (kernels, providers), kept in the stage's details."""
        return {}

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
