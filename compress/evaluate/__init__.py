"""The evaluator: task metric, latency P50/P95/P99, throughput, size and peak memory of any Runtime."""

from compress.evaluate.evaluator import evaluate, score

__all__ = ["evaluate", "score"]
