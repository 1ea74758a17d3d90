"""The Triton GPTQ block kernel (CUDA) against the torch column loop: the same codes, scales and loss.

Runs on a CUDA GPU, or on CPU under Triton's interpreter (`TRITON_INTERPRET=1 pytest tests/test_gptq_triton.py`,
with triton installed).
"""

from __future__ import annotations

import os

import pytest
import torch

from compress.quantize.gptq import gptq_quantize
from compress.quantize.gptq_triton import triton_available
from compress.quantize.scheme import QuantScheme

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
SCHEMES = [QuantScheme(4, 64, False), QuantScheme(4, 64, True), QuantScheme(4, None, False), QuantScheme(8, 32, True)]


def _problem(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, columns, generator=generator)
    # Correlated inputs with uneven scales: GPTQ's updates then matter, as in a real layer.
    x = torch.randn(4096, columns, generator=generator) @ (torch.eye(columns) + 0.3 * torch.randn(columns, columns))
    x *= torch.rand(columns, generator=generator) * 3
    return weight.to(DEVICE), (2 * x.t() @ x / x.shape[0]).to(DEVICE)


@pytest.mark.skipif(not triton_available(), reason="needs the triton package")
@pytest.mark.skipif(not (INTERPRETED or torch.cuda.is_available()), reason="needs a CUDA GPU (or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize(("act_order", "static_groups"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shape", [(72, 192), (33, 320)], ids=["72x192", "33x320-ragged"])
def test_triton_block_kernel_matches_the_torch_loop(
    scheme: QuantScheme, act_order: bool, static_groups: bool, shape: tuple[int, int]
) -> None:
    weight, hessian = _problem(*shape)
    options = {"act_order": act_order, "static_groups": static_groups, "block_size": 128}
    reference, reference_loss = gptq_quantize(weight, hessian, scheme, kernel="torch", **options)
    fast, fast_loss = gptq_quantize(weight, hessian, scheme, kernel="triton", **options)
    # The same arithmetic in the same order: the same bits.
    assert torch.equal(fast.values, reference.values)
    assert torch.equal(fast.scale, reference.scale)
    assert (fast.zero_point is None) == (reference.zero_point is None)
    assert fast.zero_point is None or torch.equal(fast.zero_point, reference.zero_point)
    assert fast_loss == reference_loss


@pytest.mark.skipif(not triton_available(), reason="needs the triton package")
@pytest.mark.skipif(not (INTERPRETED or torch.cuda.is_available()), reason="needs a CUDA GPU (or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("scheme", SCHEMES[:2], ids=str)
def test_triton_kernel_keeps_pruned_zeros_like_the_torch_loop(scheme: QuantScheme) -> None:
    weight, hessian = _problem(72, 192)
    weight = weight * (torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5).to(DEVICE)
    reference, reference_loss = gptq_quantize(weight, hessian, scheme, kernel="torch", preserve_zeros=True)
    fast, fast_loss = gptq_quantize(weight, hessian, scheme, kernel="triton", preserve_zeros=True)
    assert torch.equal(fast.values, reference.values) and torch.equal(fast.scale, reference.scale)
    assert fast_loss == reference_loss
    assert bool((fast.dequantize()[weight == 0] == 0).all())  # every pruned weight is still exactly 0


@pytest.mark.skipif(INTERPRETED, reason="the interpreter runs the kernel on CPU")
def test_triton_kernel_refuses_cpu() -> None:
    weight, hessian = torch.randn(8, 64), torch.eye(64)
    with pytest.raises(ValueError, match="CUDA"):
        gptq_quantize(weight, hessian, QuantScheme(4, 32, False), kernel="triton")
