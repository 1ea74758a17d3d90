"""Truncate: cap the tokens per input at inference time, fixed or searched on the eval data.

Attention cost grows with sequence length, so a shorter cap speeds up every later stage. Only
`ModelHandle.max_length` changes: weights and positional embeddings stay as they are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from compress.config import Schema
from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.evaluate.metrics import resolve_metric
from compress.gates import metric_drop
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig
from compress.tasks import get_task

logger = logging.getLogger(__name__)

PERCENTILES = (50, 75, 90, 95, 99, 100)
TIE_TOLERANCE = 1e-9  # equal metrics computed in a different order must not count as a drop


def token_lengths(tokenizer: PreTrainedTokenizerBase, data: TextData) -> list[int]:
    """Tokens per example, special tokens included, without truncation."""
    encoded = tokenizer(data.texts, data.pairs, truncation=False, add_special_tokens=True, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def candidate_lengths(lengths: list[int], cap: int) -> list[int]:
    """Lengths worth trying: token-length percentiles rounded up to multiples of 8, the powers of two
    between them, all capped at `cap` (the model's position limit), sorted and unique."""
    if not lengths:
        return [cap]
    points = [8 * math.ceil(float(np.percentile(lengths, q, method="higher")) / 8) for q in PERCENTILES]
    low, high = min(points), max(points)
    powers = [2**k for k in range(3, 20) if low < 2**k < high]
    return sorted({min(max(length, 1), cap) for length in points + powers})


def model_position_limit(handle: ModelHandle) -> int | None:
    """The longest input the model's positional embeddings cover, when the config says."""
    config = getattr(handle.model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def shortest_within_budget(
    candidates: list[int],
    score: Callable[[int], float],
    reference: float,
    budget: float | None,
    higher_better: bool,
    progress: bool = True,
    other: tuple[float, float] | None = None,
) -> tuple[int | None, list[dict[str, Any]]]:
    """Score candidates from the shortest up and stop at the first whose drop from `reference` is within `budget`
    (None: no such limit) and, with `other` = (metric, budget), whose drop from that metric is within its budget.

    Returns that length (None if none qualifies) and one record per scored length.
    """
    results: list[dict[str, Any]] = []
    for length in tqdm(sorted(candidates), desc="truncate search", unit="length", disable=not progress):
        value = score(length)
        drop = metric_drop(reference, value, higher_better)
        within = budget is None or drop <= budget + TIE_TOLERANCE
        record = {"max_length": length, "metric": value, "drop": drop}
        if other is not None:
            record["drop_from_stage"] = metric_drop(other[0], value, higher_better)
            within = within and record["drop_from_stage"] <= other[1] + TIE_TOLERANCE
        results.append(record | {"within_budget": within})
        logger.info("truncate: max_length=%d → %.4f (drop %+.4f, budget %s)", length, value, drop, budget)
        if within:
            return length, results
    return None, results


class StageBudget(Schema):
    stage: str = Field(description="An earlier stage, e.g. `teacher`.")
    max_drop: float = Field(ge=0, description="How far below that stage's primary metric the truncated model may go.")


class TruncateConfig(StepConfig):
    max_length: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="Tokens kept per input, or `auto`: the shortest candidate whose primary metric drop vs. "
        "the untruncated model stays within `max_accuracy_drop` (0 when unset: no loss at all).",
    )
    candidates: list[PositiveInt] | None = Field(
        None,
        description="Lengths `auto` tries; default: the 50/75/90/95/99/100th percentiles of the eval data's "
        "token lengths rounded up to multiples of 8, plus the powers of two between them.",
    )

    keep_within: StageBudget | None = Field(
        None,
        description="`auto` also keeps the primary metric within `max_drop` of an earlier stage's — "
        "`{stage: teacher, max_drop: 0.008}` charges the budget against the teacher a distilled recipe is judged "
        "by, so what distillation did not lose goes to truncation. Without `max_accuracy_drop` this is the only "
        "limit; with it, both hold.",
    )

    @model_validator(mode="after")
    def _candidates_need_auto(self) -> TruncateConfig:
        if self.candidates is not None and self.max_length != "auto":
            raise ValueError("`candidates` only applies with `max_length: auto`")
        if self.keep_within is not None and self.max_length != "auto":
            raise ValueError("`keep_within` only applies with `max_length: auto`")
        if self.candidates is not None and not self.candidates:
            raise ValueError("give at least one candidate length, or leave `candidates` out")
        return self


class Truncate(Step):
    """Inference-time truncation to a fixed or searched number of tokens."""

    name: ClassVar[str] = "truncate"
    Config = TruncateConfig
    config: TruncateConfig

    def __init__(self, config: TruncateConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # Filled by `apply` with max_length="auto": the reference first, then each scored candidate.
        self.search_results: list[dict[str, Any]] = []
        self.kept_within: dict[str, Any] = {}  # with `keep_within`: that stage's metric as measured here

    def stage_inputs(self) -> dict[str, str]:
        return {"keep_within.stage": self.config.keep_within.stage} if self.config.keep_within else {}

    def details(self) -> dict[str, Any]:
        found = {"search": self.search_results} if self.search_results else {}
        return found | ({"keep_within": self.kept_within} if self.kept_within else {})

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        limit = model_position_limit(model)
        if self.config.max_length != "auto":
            if limit is not None and self.config.max_length > limit:
                raise ConfigError(
                    f"max_length {self.config.max_length} exceeds the model's {limit} position embeddings",
                    where="truncate.max_length",
                    fix=f"use at most {limit}, or `auto`",
                )
            return model.replace(max_length=self.config.max_length)
        return model.replace(max_length=self._search(model, ctx, limit))

    def _search(self, model: ModelHandle, ctx: StageContext, limit: int | None) -> int:
        reference_length = model.max_length or ctx.eval_spec.max_length
        if limit is not None:
            reference_length = min(reference_length, limit)
        metric = get_task(model.task).primary_metric(ctx.eval_spec)
        higher_better = resolve_metric(metric, model.task, where="evaluate.metric").higher_is_better
        keep_within = self.config.keep_within
        # No limit at all means no loss at all; `keep_within` alone is a limit.
        budget = self.config.max_accuracy_drop if keep_within is not None else self.config.max_accuracy_drop or 0.0

        def score(length: int) -> float:
            return score_model(model.replace(max_length=length))

        def score_model(handle: ModelHandle) -> float:
            metrics = ctx.score(handle)
            if metric not in metrics:
                raise ConfigError(
                    f"the evaluator returned no '{metric}' (got {', '.join(sorted(metrics)) or 'nothing'})",
                    where="eval.metric",
                    fix="pick a metric the task reports",
                )
            return float(metrics[metric])

        reference = score(reference_length)
        self.search_results = [
            {
                "max_length": reference_length,
                "metric": reference,
                "drop": 0.0,
                "within_budget": True,
                "reference": True,
            }
        ]
        candidates = self.config.candidates or candidate_lengths(
            token_lengths(model.tokenizer, ctx.eval_data()), reference_length
        )
        other = None
        if keep_within is not None:
            stage = ctx.stage(keep_within.stage)
            other = (score_model(stage), keep_within.max_drop)
            self.kept_within = {"stage": keep_within.stage, "metric": other[0], "max_drop": other[1]}
            del stage
        shorter = [c for c in sorted(set(candidates)) if c < reference_length]
        chosen, scored = shortest_within_budget(
            shorter, score, reference, budget, higher_better, self.progress, other=other
        )
        self.search_results += scored
        if chosen is None:
            limits = [f"{budget:.4f} of the untruncated {reference:.4f}"] if budget is not None else []
            if keep_within is not None and other is not None:
                limits.append(f"{other[1]:.4f} of {keep_within.stage}'s {other[0]:.4f}")
            logger.warning(
                "truncate: no length shorter than %d keeps %s within %s; keeping %d",
                reference_length,
                metric,
                " and ".join(limits),
                reference_length,
            )
            chosen = reference_length
        logger.info("truncate: chose max_length=%d (reference %d)", chosen, reference_length)
        return chosen
