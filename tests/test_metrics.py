"""Built-in metrics against numbers worked out by hand, and metric resolution errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.config import EvalSpec
from compress.errors import ConfigError
from compress.evaluate.evaluator import resolve_metrics
from compress.evaluate.metrics import accuracy, f1, matthews_correlation, perplexity, resolve_metric
from compress.registry import METRICS


def one_hot(predictions: list[int], classes: int) -> np.ndarray:
    """Logits whose argmax is `predictions`."""
    return np.eye(classes, dtype=np.float32)[predictions]


# Binary: TP=3 (rows 0, 1, 6), FN=1 (row 2), FP=2 (rows 4, 7), TN=2 (rows 3, 5).
BINARY_LABELS = np.array([1, 1, 1, 0, 0, 0, 1, 0])
BINARY_LOGITS = one_hot([1, 1, 0, 0, 1, 0, 1, 1], 2)


def test_binary_accuracy_f1_mcc() -> None:
    assert accuracy(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(5 / 8)
    assert f1(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 − 2) / sqrt(5·4·4·3)
    assert matthews_correlation(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(4 / math.sqrt(240))


def test_multiclass_macro_f1_and_mcc() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = one_hot([0, 1, 1, 1, 2, 0], 3)
    # per class F1: class 0 = 2/(2+1+1), class 1 = 4/(4+1+0), class 2 = 2/(2+0+1)
    assert f1(logits, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Gorodkin: (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)) with c=4, s=6, p=(2,3,1), t=(2,2,2)
    assert matthews_correlation(logits, labels) == pytest.approx(12 / math.sqrt(22 * 24))


def test_macro_f1_leaves_out_classes_never_seen() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    four_way = np.pad(one_hot([0, 1, 1, 1, 2, 0], 3), ((0, 0), (0, 1)), constant_values=-1.0)
    assert f1(four_way, labels) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_degenerate_predictions() -> None:
    labels = np.array([0, 1, 0, 1])
    all_zero = one_hot([0, 0, 0, 0], 2)
    assert matthews_correlation(all_zero, labels) == 0.0  # undefined → 0, as scikit-learn
    assert f1(all_zero, labels) == 0.0
    assert matthews_correlation(one_hot([0, 1, 0, 1], 2), labels) == pytest.approx(1.0)
    assert matthews_correlation(one_hot([1, 0, 1, 0], 2), labels) == pytest.approx(-1.0)


def test_perplexity_weights_windows_by_scored_tokens() -> None:
    assert perplexity(np.array([1.0, 2.0]), np.array([1, 3])) == pytest.approx(math.exp(7 / 4))


def test_builtins_are_registered_with_direction() -> None:
    assert {"accuracy", "f1", "matthews_correlation", "perplexity"} <= set(METRICS.names())
    assert METRICS.get("accuracy").higher_is_better is True
    assert METRICS.get("perplexity").higher_is_better is False
    resolved = resolve_metric("matthews_correlation", "text-classification")
    assert resolved.higher_is_better
    assert resolved(BINARY_LOGITS, BINARY_LABELS) == pytest.approx(4 / math.sqrt(240))


def test_unknown_metric_offline_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        resolve_metrics(EvalSpec(metric="no_such_metric_anywhere"), "text-classification")
    message = str(info.value)
    assert "evaluate.metric" in message
    assert "no_such_metric_anywhere" in message
    for builtin in ("accuracy", "f1", "matthews_correlation", "perplexity"):
        assert builtin in message


def test_metric_for_the_wrong_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.extra_metrics\[0\].*text-classification") as info:
        resolve_metrics(EvalSpec(metric="perplexity", extra_metrics=["accuracy"]), "causal-lm")
    assert "perplexity" in str(info.value)
    with pytest.raises(ConfigError, match=r"evaluate\.metric"):
        resolve_metrics(EvalSpec(metric="bleu"), "causal-lm")


def test_causal_lm_default_metric_is_perplexity() -> None:
    assert [m.name for m in resolve_metrics(EvalSpec(), "causal-lm")] == ["perplexity"]
    names = [m.name for m in resolve_metrics(EvalSpec(extra_metrics=["f1", "accuracy"]), "text-classification")]
    assert names == ["accuracy", "f1"]
