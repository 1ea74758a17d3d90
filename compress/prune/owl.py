"""OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): a per-layer sparsity for one-shot pruning.

A decoder layer whose Wanda scores |W_ij| · ‖X_j‖ hold many outliers (scores above `threshold` times the layer's
mean) is kept denser; one with few is pruned harder. The layers' outlier ratios are spread linearly over
[target − spread, target + spread] of sparsity, the fewest outliers getting the most, so the model's mean sparsity
stays the target (layers of equal size). The paper's settings: threshold 5, spread 0.08.
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Share of a layer's scores (all its pruned Linears together) above `threshold` × their mean."""
    flat = torch.cat([score.detach().float().flatten().cpu() for score in scores])
    if flat.numel() == 0:
        raise ValueError("no scores: the layer has no pruned Linear")
    return float((flat > threshold * flat.mean()).float().mean())


def layer_sparsities(ratios: list[float], target: float, spread: float) -> list[float]:
    """Each layer's sparsity from its outlier ratio: mean `target`, range 2 × `spread`, more outliers → denser.

    Equal ratios give `target` everywhere. ValueError when a layer would fall outside (0, 1).
    """
    if not ratios:
        return []
    low, high = min(ratios), max(ratios)
    if high == low:
        return [target] * len(ratios)
    scaled = [(ratio - low) / (high - low) * 2 * spread for ratio in ratios]
    mean = sum(scaled) / len(scaled)
    sparsities = [target - (value - mean) for value in scaled]
    if min(sparsities) <= 0 or max(sparsities) >= 1:
        raise ValueError(
            f"sparsity {target} with spread {spread} puts a layer at {min(sparsities):.3f}..{max(sparsities):.3f}, "
            "outside (0, 1)"
        )
    return sparsities
