"""AutoRound: the learned fake quantizer on one small block (better than RTN, bounded, exact integer form,
deterministic) and the `autoround` step on a tiny random Llama (replaces, beats RTN, saves, refuses bad input)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from quant_helpers import CALIBRATION, all_plain, context, logits, mean_error, probe_ids
from torch import nn
from torch.func import functional_call

from compress.data.text_data import TextData
from compress.errors import ConfigError, MissingExtra
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.quantize.autoround import BlockCall, LearnedRounding, fake_quantize_learned, tune_block
from compress.quantize.rtn import rtn_quantize
from compress.quantize.scheme import QuantScheme
from compress.steps.quantize.autoround import AutoRound
from compress.steps.quantize.rtn import RTN

SCHEMES = [QuantScheme(4, 16, False), QuantScheme(4, 16, True)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tuning runs hundreds of tiny forward/backward passes: a second thread buys nothing on tensors this small,
    and when the cores are busy its spin-waits made this file ~6x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MLPBlock(nn.Module):
    """A residual MLP, the shape of a decoder layer's second half."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.silu(self.up(x)))


def correlated_inputs(seed: int, windows: int = 8, tokens: int = 32, width: int = 32) -> torch.Tensor:
    """Inputs dominated by a few shared directions, as LLM activations are: rounding errors then add up (or cancel)
    across columns, which RTN ignores and learned rounding exploits."""
    fixed = torch.Generator().manual_seed(1234)
    directions = torch.randn(6, width, generator=fixed)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(windows, tokens, 6, generator=generator) @ directions + 0.2 * torch.randn(
        windows, tokens, width, generator=generator
    )


def tiny_block() -> tuple[MLPBlock, list[BlockCall], list[torch.Tensor]]:
    torch.manual_seed(0)
    block = MLPBlock()
    x = correlated_inputs(0)
    calls: list[BlockCall] = [((x[i : i + 4],), {}) for i in (0, 4)]
    with torch.no_grad():
        targets = [block(*args) for args, _ in calls]
    return block, calls, targets


def block_error(block: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    with torch.no_grad():
        substituted = functional_call(block, {f"{name}.weight": w for name, w in weights.items()}, (x,))
        return float((substituted - block(x)).pow(2).mean())


@pytest.mark.parametrize("scheme", SCHEMES, ids=["asymmetric", "symmetric"])
def test_initial_parameters_are_rtn(scheme: QuantScheme) -> None:
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(3))
    weight[2] = 0.0  # an all-zero row: epsilon scale, as in RTN
    start = LearnedRounding.initial(weight, scheme)
    assert torch.equal(
        fake_quantize_learned(weight, *start.tensors(), scheme), rtn_quantize(weight, scheme).dequantize()
    )


@pytest.mark.parametrize("scheme", SCHEMES, ids=["asymmetric", "symmetric"])
def test_tuned_block_beats_rtn_and_stays_in_bounds(scheme: QuantScheme) -> None:
    block, calls, targets = tiny_block()
    linears = {"up": block.up, "down": block.down}
    before = {name: p.detach().clone() for name, p in block.state_dict().items()}
    tuned = tune_block(block, calls, targets, linears, scheme, iters=60, batch_size=8, seed=0)

    rtn = {name: rtn_quantize(m.weight.detach(), scheme).dequantize() for name, m in linears.items()}
    learned = {name: q.dequantize() for name, q in tuned.quantized.items()}
    seen, unseen = correlated_inputs(0), correlated_inputs(1)
    assert block_error(block, learned, seen) < 0.9 * block_error(block, rtn, seen)
    assert block_error(block, learned, unseen) < 0.9 * block_error(block, rtn, unseen)  # not overfitted
    assert tuned.best_loss is not None and tuned.initial_loss is not None and tuned.best_loss < tuned.initial_loss

    for name, module in linears.items():
        p = tuned.params[name]
        assert float(p.v.abs().max()) <= 0.5 and float(p.v.abs().max()) > 0
        for factor in (p.alpha, p.beta):
            assert float(factor.min()) >= 0.5 and float(factor.max()) <= 1.0
        # The stored integers are exactly the tuned fake quantizer's grid.
        assert torch.equal(
            tuned.quantized[name].dequantize(), fake_quantize_learned(module.weight, *p.tensors(), scheme)
        )
        assert (tuned.quantized[name].zero_point is None) == scheme.symmetric
    # The block itself is left as it was, gradients off for nothing but what was already off.
    assert all(torch.equal(before[name], p) for name, p in block.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in block.parameters())


def test_tuning_is_deterministic_with_a_seed() -> None:
    scheme = SCHEMES[0]
    results = []
    for seed in (0, 0, 1):
        block, calls, targets = tiny_block()
        tuned = tune_block(block, calls, targets, {"up": block.up}, scheme, iters=10, batch_size=4, seed=seed)
        results.append(tuned.params["up"].v)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])  # the seed picks the batches


def test_zero_iterations_is_rtn() -> None:
    block, calls, targets = tiny_block()
    tuned = tune_block(block, calls, targets, {"down": block.down}, SCHEMES[0], iters=0)
    expected = rtn_quantize(block.down.weight.detach(), SCHEMES[0])
    assert torch.equal(tuned.quantized["down"].values, expected.values)
    assert tuned.best_step is None and tuned.initial_loss is None


# --- the step on a tiny Llama ------------------------------------------------------------------------------------


def test_step_beats_rtn_and_reloads(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    rtn = RTN(bits=4, group_size=16).apply(
        tiny_llama.replace(model=copy.deepcopy(tiny_llama.model)), context(wiki, tmp_path)
    )
    step = AutoRound(bits=4, group_size=16, iters=20, calibration=CALIBRATION)
    handle = step.apply(tiny_llama, context(wiki, tmp_path))

    kinds = {name: type(m) for name, m in handle.model.named_modules() if isinstance(m, nn.Linear | QuantizedLinear)}
    assert kinds.pop("lm_head") is nn.Linear
    assert len(kinds) == 14 and all(kind is QuantizedLinear for kind in kinds.values())
    assert handle.model.config.quantization_config["quant_method"] == "compressed-tensors"
    assert mean_error(handle, reference, ids) < 0.9 * mean_error(rtn, reference, ids)
    layer_loss = step.details()["layer_loss"]
    assert set(layer_loss) == {"model.layers.0", "model.layers.1"}
    assert all(entry["best"] < entry["rtn"] for entry in layer_loss.values())

    save_handle(handle, tmp_path / "stage")
    assert torch.equal(logits(load_handle(tmp_path / "stage").model, ids), logits(handle.model, ids))


def test_group_size_that_does_not_divide_fails_before_work(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as error:
        AutoRound(group_size=24, calibration=CALIBRATION).apply(tiny_llama, context(wiki, tmp_path))
    assert error.value.where == "autoround.group_size" and "[32, 64]" in str(error.value)
    assert all_plain(tiny_llama)


def test_missing_autoround_package_names_the_fix(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import auto_round` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "auto_round", None)
    with pytest.raises(MissingExtra) as error:
        AutoRound(group_size=16, backend="auto-round", calibration=CALIBRATION).apply(
            tiny_llama, context(wiki, tmp_path)
        )
    assert error.value.where == "autoround.backend"
    assert 'pip install "compress[autoround]"' in error.value.fix and "backend: native" in error.value.fix
    assert all_plain(tiny_llama) and not list(tmp_path.iterdir())
