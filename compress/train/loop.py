"""The training loop every training step uses: accelerate for devices, precision and processes.

A step supplies the module to train, tokenized rows and a loss callback; the loop owns the rest:
length-grouped batches with dynamic padding, AdamW with a linear warm-up schedule, gradient accumulation and
clipping, checkpoints in the stage's work folder, and resuming from the newest one. Launched with
`accelerate launch` the same code runs data-parallel (DDP or FSDP, as accelerate is configured).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from compress.errors import ConfigError
from compress.prune.masks import SparsityKeeper
from compress.prune.schedule import GradualMagnitude, ramp_steps
from compress.quantize.targets import check_patterns, select_linears
from compress.train.batches import LengthGroupedBatches, Row, pad_collate
from compress.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    remove_foreign_checkpoints,
    save_checkpoint,
)
from compress.train.fingerprint import hash_json
from compress.train.settings import TrainSettings

log = logging.getLogger("compress.train")

# (module being trained, padded batch on the training device) -> scalar loss
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
Evaluate = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained module, unwrapped from any DDP/FSDP wrapper
    steps: int
    resumed_from: int  # the optimizer step the run resumed at; 0 for a fresh start
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)


def train(
    module: torch.nn.Module,
    rows: list[Row],
    loss_fn: LossFn,
    settings: TrainSettings,
    *,
    work_dir: Path,
    key: str,
    pad_token_id: int,
    device: torch.device,
    seed: int,
    evaluate: Evaluate | None = None,
    description: str = "train",
) -> TrainResult:
    """Train `module` in place on `rows`; resume from `work_dir` if it holds a checkpoint of this training.

    `key` identifies what is trained on what (model, data, loss); with the settings and seed it decides which
    checkpoints may be resumed.
    """
    key = hash_json([key, settings.training_key(), seed])
    checkpoints = Path(work_dir) / "checkpoints"
    accelerator = _accelerator(settings, device)
    set_seed(seed)

    batches = LengthGroupedBatches([len(r["input_ids"]) for r in rows], settings.batch_size, seed)
    loader = DataLoader(
        rows,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_sampler=batches,
        collate_fn=pad_collate(pad_token_id),
        # Its own generator: creating an epoch's iterator must not consume the global random state that
        # dropout uses, or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(module, settings.weight_decay),
        lr=settings.learning_rate,
        # One fused kernel over every parameter instead of a loop of small ops: the same update, ~13 % faster
        # steps for the flagship's student on a 2-core CPU. FSDP's sharded parameters keep the default.
        fused=accelerator.device.type in ("cpu", "cuda") and accelerator.distributed_type != DistributedType.FSDP,
    )
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    # A pruned model (Linear layers that are ≥ 5 % exact zeros) keeps its zeros: recovery must not refill them.
    sparsity = SparsityKeeper(accelerator.unwrap_model(module))
    if len(sparsity):
        log.info("%s: keeping the zeros of %d pruned layer(s) while training", description, len(sparsity))
    steps_per_epoch = math.ceil(len(loader) / settings.gradient_accumulation_steps)
    total = settings.max_steps or math.ceil(settings.epochs * steps_per_epoch)
    gradual = _gradual_pruning(accelerator.unwrap_model(module), settings, total, description)
    # A prepared scheduler advances once per process at each step, so it is sized in those units.
    scale = accelerator.num_processes
    scheduler = accelerator.prepare(
        get_linear_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * total) * scale, total * scale)
    )

    if accelerator.is_main_process:
        remove_foreign_checkpoints(checkpoints, key)
    accelerator.wait_for_everyone()
    found = latest_checkpoint(checkpoints, key)
    state = load_checkpoint(accelerator, found) if found else TrainerState(key=key)
    resumed_from = state.step
    if found:
        log.info("%s: resuming from %s (step %d of %d)", description, found, state.step, total)
        if gradual is not None:
            gradual.catch_up(state.step)

    def checkpoint() -> None:
        save_checkpoint(accelerator, checkpoints, state, settings.keep_checkpoints)

    bar = tqdm(
        total=total,
        initial=state.step,
        desc=description,
        unit="step",
        disable=not (settings.progress and accelerator.is_local_main_process),
    )
    micro_losses: list[float] = []
    while state.step < total:
        batches.set_epoch(state.epoch)
        epoch_loader = (
            accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        )
        module.train()
        finished_epoch = True
        for batch in epoch_loader:
            with accelerator.accumulate(module), accelerator.autocast():
                loss = loss_fn(module, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
                optimizer.step()
                sparsity.apply()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            micro_losses.append(loss.detach().float().item())
            if not math.isfinite(micro_losses[-1]):
                raise ConfigError(
                    f"the training loss became {micro_losses[-1]} at step {state.step + 1}: training diverged",
                    where=description,
                    fix="lower learning_rate (or set max_grad_norm); nothing was saved for this stage",
                )
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if gradual is not None:
                gradual.step(state.step)
            state.losses.append(sum(micro_losses) / len(micro_losses))
            micro_losses.clear()
            bar.update(1)
            bar.set_postfix(loss=f"{state.losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if settings.eval_every and state.step % settings.eval_every == 0 and evaluate is not None:
                _evaluate(accelerator, module, evaluate, state)
            if state.step >= total:
                finished_epoch = state.batches_in_epoch >= len(loader)
                break
            if settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
                checkpoint()
        if finished_epoch:
            state.epoch += 1
            state.batches_in_epoch = 0
        checkpoint()
    bar.close()
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(module)
    trained.eval()
    return TrainResult(trained, state.step, resumed_from, list(state.losses), list(state.evaluations))


def _gradual_pruning(
    module: torch.nn.Module, settings: TrainSettings, total: int, description: str
) -> GradualMagnitude | None:
    spec = settings.gradual_pruning
    if spec is None:
        return None
    where = f"{description}.gradual_pruning"
    check_patterns(spec.targets, f"{where}.targets")
    check_patterns(spec.ignore, f"{where}.ignore")
    start, end = ramp_steps(total, spec.start, spec.end)
    every = spec.every or max((end - start) // 20, 1)
    linears = select_linears(module, spec.targets, spec.ignore, where)
    log.info(
        "%s: pruning %d Linear(s) by magnitude to %.0f %% over steps %d–%d (every %d)",
        description, len(linears), 100 * spec.sparsity, start, end, every,
    )  # fmt: skip
    return GradualMagnitude(linears, spec.sparsity, start, end, every, spec.scope)


def _evaluate(accelerator: Accelerator, module: torch.nn.Module, evaluate: Evaluate, state: TrainerState) -> None:
    if accelerator.is_main_process:
        metrics = {"step": float(state.step), **evaluate(accelerator.unwrap_model(module))}
        state.evaluations.append(metrics)
        log.info("step %d: %s", state.step, metrics)
        module.train()
    accelerator.wait_for_everyone()


def _accelerator(settings: TrainSettings, device: torch.device) -> Accelerator:
    precision = settings.mixed_precision
    if precision == "fp16" and device.type != "cuda":
        log.warning("mixed_precision fp16 needs CUDA; training in float32 on %s", device)
        precision = "no"
    # accelerate keeps one process-wide state; each training may ask for other precision or accumulation.
    # Under `accelerate launch` the distributed part (process group, device) is kept.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()
    return Accelerator(
        cpu=device.type == "cpu" and not distributed,
        mixed_precision=precision,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
    )


def _parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay matrices only: decaying biases and normalisation scales hurts and is not standard practice."""
    decay, no_decay = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
