"""Runs a recipe's stages in order — baseline, steps, exports — evaluating each, applying gates, caching each.

Every finished stage is on disk (model or artifact, result.json, outputs.npy) under its content key, so a
re-run, or a run after a crash, skips straight to the first unfinished stage. Reports are rewritten after
every stage, so even an interrupted run leaves a readable report of what finished.

Steps transform the model they are given in place (a 7B model is not copied per stage), so handing a stage's
model to the next step consumes it: from then on that stage is reloaded from its saved folder (the baseline
from its source) when an export names it. At most the current stage's model is kept in memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from compress.cache import StageStore, data_identity, stable_hash
from compress.data.provider import DataProvider
from compress.distributed import barrier, from_main, is_main_process, local_device
from compress.environment import environment
from compress.errors import CompressError, NotEvaluable
from compress.evaluate import cpu_competition
from compress.evaluate.memory import PeakMemory
from compress.export.deploy import sample_inputs
from compress.gates import check_gate, check_speed
from compress.io import atomic_directory
from compress.models.handle import ModelHandle
from compress.report.build import (
    classification_report,
    dataset_summary,
    is_contended,
    load_1m,
    machine_load,
    resolved_recipe,
)
from compress.result import ClassificationReport, DatasetSummary, RunReport, StageResult
from compress.run_lock import run_folder
from compress.runtime.base import Runtime
from compress.steps.base import StageContext
from compress.tasks import get_task

if TYPE_CHECKING:
    from compress.recipe import Recipe

log = logging.getLogger("compress")


@dataclass
class RunResult:
    report: RunReport
    output_dir: Path
    final_model_dir: Path | None

    @property
    def stages(self) -> list[StageResult]:
        return self.report.stages

    def table(self) -> str:
        from compress.report.markdown import stage_table

        return stage_table(self.report.stages)

    def __getitem__(self, name: str) -> StageResult:
        for stage in self.report.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


class Runner:
    def __init__(self, recipe: Recipe, output_dir: Path, *, resume: bool = True, progress: bool = True) -> None:
        self.recipe = recipe
        self.output_dir = output_dir
        self.resume = resume
        self.progress = progress
        self.store = StageStore(output_dir)
        spec = recipe.evaluate
        want_cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise CompressError(
                "evaluate.device is 'cuda' but no CUDA GPU is visible",
                where="evaluate.device",
                fix="use device: auto or cpu",
            )
        self.device = local_device(torch.device("cuda" if want_cuda else "cpu"))
        self.data = DataProvider(recipe.data, recipe.model.task, recipe.base_dir, recipe.seed)
        self.task = get_task(recipe.model.task)
        self.stages: list[StageResult] = []
        # stage name → (its folder, its model in memory or a loader for it, its content key)
        self.models: dict[str, tuple[Path, ModelHandle | Callable[[], ModelHandle], str]] = {}
        self.started = time.perf_counter()
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        # Before any work of this run: the others' load alone (see `compress.report.build.is_contended`).
        self.load_start = load_1m()
        self.cpu_count = os.cpu_count() or 1
        self.resolved = _resolved_or_none(recipe)
        self._outputs: dict[Path, np.ndarray] = {}  # stage folder → its outputs.npy, read once for the report
        self._previous: RunReport | None = None  # this folder's report before this run, read in `run`

    # ---------------------------------------------------------------- helpers
    def _runtime(self, handle: ModelHandle) -> Runtime:
        from compress.runtime.torch import TorchRuntime

        spec = self.recipe.evaluate
        # 2:4 kernels are chosen at the rows of the scoring batch: its sequences at the longest they can be.
        rows = spec.scoring_batch_size * min(handle.max_length or spec.seq_len, spec.seq_len)
        return TorchRuntime(handle, self.device, semi_structured_tokens=rows if spec.semi_structured_kernels else None)

    def _score(self, handle: ModelHandle) -> dict[str, float]:
        from compress.evaluate.evaluator import score

        runtime = self._runtime(handle)
        try:
            return score(runtime, self.data.eval, self.recipe.evaluate)
        finally:
            runtime.close()

    def _evaluate_model(
        self, result: StageResult, handle: ModelHandle, stage_dir: Path, source_outputs: np.ndarray | None
    ) -> StageResult:
        runtime = self._runtime(handle)
        try:
            return self._evaluate(result, runtime, stage_dir, source_outputs)
        finally:
            runtime.close()

    def _context(self, key: str) -> StageContext:
        return StageContext(
            train_data=lambda: self.data.train,
            eval_data=lambda: self.data.eval,
            calibration_data=self.data.calibration,
            score=self._score,
            eval_spec=self.recipe.evaluate,
            device=self.device,
            work_dir=self.store.work_dir(key),
            seed=self.recipe.seed,
            base_dir=self.recipe.base_dir,
            stage=self._stage_copy,
        )

    def _stage_copy(self, name: str) -> ModelHandle:
        """A fresh copy of an earlier stage's model, which the step may keep beside the model it transforms."""
        return self._loader(name)()

    def _loader(self, name: str) -> Callable[[], ModelHandle]:
        """What loads a stage's model afresh: the baseline from its source, any other stage from its folder."""
        return self._load_source if name == "baseline" else _lazy_load(self.models[name][0] / "model", self.device)

    def _evaluate(
        self, result: StageResult, runtime: Runtime, stage_dir: Path, source_outputs: np.ndarray | None
    ) -> StageResult:
        from compress.evaluate.evaluator import evaluate

        if not is_main_process():  # the other processes only help train
            return result
        before = cpu_competition.sample()
        evaluation, outputs = evaluate(runtime, self.data.eval, self.recipe.evaluate, progress=self.progress)
        result = result.apply_evaluation(evaluation)
        result.details |= runtime.details()
        result.cpu_used_by_others = cpu_competition.cores_used_by_others(before, cpu_competition.sample())
        result.measured_under_load = self._contended(result.cpu_used_by_others)
        if source_outputs is not None:
            fidelity = self.task.fidelity(source_outputs, outputs)
            result.max_abs_diff, result.prediction_agreement = fidelity.max_abs_diff, fidelity.agreement
        self.store.save_outputs(stage_dir, outputs)
        return result

    def _threads(self) -> int:
        return self.recipe.evaluate.threads or torch.get_num_threads()

    def _contended(self, others_cores: float | None) -> bool:
        if others_cores is None:  # no /proc/stat (macOS, Windows): judge by the load average
            return is_contended(self.cpu_count, self._threads(), self.load_start, load_1m())
        return cpu_competition.others_compete(others_cores, self.cpu_count, self._threads())

    def _write_report(self, stopped: str | None = None) -> RunReport:
        from compress.report.write import write_reports

        report = RunReport(
            recipe=self.recipe.name,
            created=self.created,
            output_dir=str(self.output_dir),
            environment=environment(),
            stages=self.stages,
            stopped=stopped,
            # Compute time, not this invocation's: a cached stage counts at the time it originally took.
            total_duration_s=sum(s.duration_s + (s.eval_duration_s or 0.0) for s in self.stages),
            wall_duration_s=time.perf_counter() - self.started,
            resolved_recipe=self.resolved,
            machine_load=machine_load(
                self.cpu_count,
                self._threads(),
                self.load_start,
                load_1m(),
                contended=any(s.measured_under_load and not s.cached for s in self.stages),
            ),
        )
        if is_main_process():
            report.dataset, report.classification = self._data_figures()
            write_reports(report, self.output_dir)
        return report

    def _data_figures(self) -> tuple[DatasetSummary, ClassificationReport | None]:
        """The dataset summary and the per-class figures; without them (logged) when the data cannot be read
        here — a report must not fail a run whose stages are done."""
        train_rows = len(self.data.train) if "train" in vars(self.data) else self._previous_train_rows()
        try:
            data = self.data.eval
        except CompressError as exc:
            log.warning("report: the evaluation split could not be read, so no per-class figures: %s", exc)
            summary = dataset_summary(self.recipe.data, self.recipe.base_dir, eval_rows=None, train_rows=train_rows)
            return summary, None
        summary = dataset_summary(self.recipe.data, self.recipe.base_dir, eval_rows=len(data), train_rows=train_rows)
        if data.labels is None:  # a task without labels (causal LM) has no classes
            return summary, None
        outputs = {}
        for stage in self.stages:
            logits = self._stage_outputs(stage)
            if logits is not None:
                outputs[stage.name] = logits
        return summary, classification_report(outputs, data.labels, data.label_names)

    def _stage_outputs(self, stage: StageResult) -> np.ndarray | None:
        """The stage's saved outputs (outputs.npy in its folder), None where it has none (failed, not evaluated)."""
        if stage.name in self.models:
            stage_dir = self.models[stage.name][0]
        elif stage.artifact is not None:  # an export: `<stage folder>/artifact`
            stage_dir = Path(stage.artifact).parent
        else:
            return None
        if stage_dir not in self._outputs:
            outputs = self.store.load_outputs(stage_dir)
            if outputs is None:
                return None
            self._outputs[stage_dir] = outputs
        return self._outputs[stage_dir]

    def _previous_train_rows(self) -> int | None:
        """Train rows from this folder's earlier report of the same recipe: a re-run whose training stages are
        all cached never reads the train split, yet trained on those rows."""
        previous = self._previous
        if previous is None or previous.dataset is None or self.resolved is None:
            return None
        if previous.resolved_recipe != self.resolved:
            return None
        return previous.dataset.train_rows

    def _cached(self, stage_dir: Path, artifact: str) -> StageResult | None:
        if not self.resume:
            return None
        result = self.store.load_result(stage_dir)
        if result is None or result.status == "failed" or not (stage_dir / artifact).exists():
            return None
        # Gates are re-checked on every run (the recipe's limit may have changed since).
        status = "not_evaluated" if result.status == "not_evaluated" else "ok"
        message = result.message if status == "not_evaluated" else None
        return result.model_copy(update={"cached": True, "status": status, "message": message})

    def _model(self, name: str) -> ModelHandle:
        """The stage's model, loaded (and then kept) if it is not in memory."""
        stage_dir, handle, key = self.models[name]
        if callable(handle):
            handle = handle()
            self.models[name] = (stage_dir, handle, key)
        return handle

    def _consume(self, name: str) -> ModelHandle:
        """The stage's model for a step, which may transform it in place: the stage reloads if named again."""
        handle = self._model(name)
        self._release(name)
        handle.saved_dir = None  # the step may change these weights; the runner sets it once they are saved
        return handle

    # ---------------------------------------------------------------- the loop
    def run(self) -> RunResult:
        # A run rejected before it wrote anything (bad data, a model that does not load) leaves no folder behind.
        with run_folder(self.output_dir, lock=is_main_process()):
            self._previous = _read_previous_report(self.output_dir)
            return self._run()

    def _run(self) -> RunResult:
        recipe = self.recipe
        if recipe.evaluate.threads:
            torch.set_num_threads(recipe.evaluate.threads)
        torch.manual_seed(recipe.seed)
        key = stable_hash(
            recipe.model.model_dump(),
            data_identity(recipe.data, recipe.base_dir),
            recipe.evaluate.model_dump(),
        )
        self._baseline(key)
        stopped: str | None = None
        reference = self.stages[0]
        previous_name = "baseline"

        for index, step in enumerate(recipe.steps, start=1):
            barrier()  # every process sees the same finished stages
            source_name = step.config.source or previous_name  # Recipe checked it is an earlier stage
            if source_name != previous_name:
                self._release(previous_name)  # not needed in memory: it reloads if an export names it
            source_dir, _, source_key = self.models[source_name]
            key = stable_hash(source_key, step.cache_key())
            if step.stage_inputs():  # e.g. a teacher stage: retraining it must change this stage too
                key = stable_hash(key, [self.models[name][2] for name in step.stage_inputs().values()])
            stage_dir = self.store.stage_dir(index, step.label, key)
            result = self._cached(stage_dir, "model")
            if result is None:
                result, handle = self._run_step(
                    step,
                    self._consume(source_name),
                    key,
                    stage_dir,
                    self.store.load_outputs(source_dir),
                    source_name,
                )
            else:
                handle = _lazy_load(stage_dir / "model", self.device)
                self._release(source_name)
                log.info("stage %s: cached", step.label)
            previous = next(s for s in self.stages if s.name == source_name)
            self.stages.append(result)
            self.models[result.name] = (stage_dir, handle, key)
            previous_name = result.name
            if step.sets_reference:
                reference = result
                for earlier in self.stages:  # deltas and speedups are read against the new reference
                    earlier.metric_delta = _delta(earlier, reference)
            result.metric_delta = _delta(result, reference)
            failure = check_gate(
                result, previous, step.config.max_accuracy_drop, f"step '{step.label}' limit"
            ) or check_gate(result, reference, recipe.gates.max_accuracy_drop, "recipe limit (gates.max_accuracy_drop)")
            if not step.sets_reference:  # a finetune makes the reference; it compresses nothing
                failure = failure or self._speed_gate(result, previous)
            failure = from_main(failure)  # only the main process has the metrics
            if failure:
                result.status, result.message = "gate_failed", failure
                self.store.save_result(stage_dir, result)
                stopped = failure
                break
            self._write_report()

        if stopped is None and is_main_process():
            sources = [exporter.config.source or previous_name for exporter in recipe.exports]
            for offset, exporter in enumerate(recipe.exports, start=len(recipe.steps) + 1):
                source_name = sources[offset - len(recipe.steps) - 1]  # Recipe checked it exists
                source_dir, _, source_key = self.models[source_name]
                export_key = stable_hash(source_key, exporter.cache_key())
                stage_dir = self.store.stage_dir(offset, f"export-{exporter.label}", export_key)
                result = self._cached(stage_dir, "artifact")
                if result is None:
                    result = self._run_export(
                        exporter,
                        self._model(source_name),
                        export_key,
                        stage_dir,
                        self.store.load_outputs(source_dir),
                        source_name,
                    )
                result.metric_delta = _delta(result, reference)
                source_result = next(s for s in self.stages if s.name == source_name)
                failure = check_gate(
                    result,
                    source_result,
                    exporter.config.max_accuracy_drop,
                    f"export '{exporter.label}' limit",
                ) or self._speed_gate(result, source_result)
                if result.status == "ok" and failure:
                    result.status, result.message = "gate_failed", failure
                self.stages.append(result)
                later = sources[offset - len(recipe.steps) :]
                if source_name != previous_name and source_name not in later:
                    self._release(source_name)  # an earlier stage reloaded for this export: not needed again
                self._write_report()

        report = self._write_report(stopped)
        final = _last_model_stage(self.stages)
        final_dir = self.models[final.name][0] / "model" if final.kind == "step" else None
        return RunResult(report=report, output_dir=self.output_dir, final_model_dir=final_dir)

    def _speed_gate(self, result: StageResult, source: StageResult) -> str | None:
        """The speed gate's failure message; under `speed_gate: warn` the shortfall goes into the stage's
        message instead and nothing fails."""
        shortfall = check_speed(result, source, self.recipe.gates.min_speedup)
        if shortfall is None or self.recipe.gates.speed_gate == "fail":
            return shortfall
        log.warning("%s", shortfall)
        result.message = f"{result.message}; {shortfall}" if result.message else shortfall
        return None

    def _release(self, name: str) -> None:
        """Forget a stage's in-memory model: it reloads from its folder (the baseline from its source)."""
        stage_dir, handle, key = self.models[name]
        if not callable(handle):
            self.models[name] = (stage_dir, self._loader(name), key)

    def _baseline(self, key: str) -> None:
        stage_dir = self.store.stage_dir(0, "baseline", key)
        cached = self._cached(stage_dir, "result.json")
        if cached is not None:
            self.stages.append(cached)
            self.models["baseline"] = (stage_dir, self._load_source, key)
            return
        handle = self._load_source()
        started = time.perf_counter()
        result = StageResult(name="baseline", kind="baseline", config={"model": self.recipe.model.source})
        result = self._evaluate_model(result, handle, stage_dir, None)
        result.duration_s = time.perf_counter() - started - (result.eval_duration_s or 0.0)
        result.metric_delta = 0.0
        self.store.save_result(stage_dir, result)
        self.stages.append(result)
        self.models["baseline"] = (stage_dir, handle, key)
        self._write_report()

    def _load_source(self) -> ModelHandle:
        from compress.models.load import load_model

        # The evaluation split's label names size a classifier's head; tasks without labels have none.
        handle = load_model(self.recipe.model, label_names=self.data.eval.label_names)
        if handle.max_length is None:
            # The task's length: the tokenizer limit for classifiers, the perplexity window for causal LMs.
            wanted = get_task(handle.task).default_max_length(self.recipe.evaluate)
            context = getattr(handle.model.config, "max_position_embeddings", None)
            handle.max_length = min(wanted, context or wanted)
        return handle

    def _run_step(
        self,
        step,
        handle: ModelHandle,
        key: str,
        stage_dir: Path,
        source_outputs: np.ndarray | None,
        source_name: str,
    ) -> tuple[StageResult, ModelHandle]:
        from compress.models.serialize import load_handle, save_handle

        result = self.store.load_step(stage_dir) if self.resume else None
        if result is not None:
            log.info("stage %s: the step finished in an earlier run; evaluating its saved model", step.label)
            new_handle = load_handle(stage_dir / "model", self.device)
        else:
            log.info("stage %s: applying", step.label)
            started = time.perf_counter()
            step.progress = self.progress
            with self._peak_memory() as memory:
                new_handle = step.apply(handle, self._context(key))
            duration = time.perf_counter() - started
            if is_main_process():
                with atomic_directory(stage_dir / "model") as tmp:
                    save_handle(new_handle, tmp)
            barrier()
            if step.evaluate_saved:
                # What is evaluated is what was written: a bug in the checkpoint format shows as a bad stage.
                new_handle = load_handle(stage_dir / "model", self.device)
            result = StageResult(
                name=step.label,
                kind="step",
                step=step.name,
                config=step.config.model_dump(mode="json"),
                duration_s=duration,
                source=source_name,
                artifact=str(stage_dir / "model"),
                details=step.details(),
                **memory,
            )
            self.store.save_step(stage_dir, result)
        new_handle.saved_dir = stage_dir / "model"  # its size is now the bytes of these files
        result = self._evaluate_model(result, new_handle, stage_dir, source_outputs)
        self.store.save_result(stage_dir, result)
        self.store.discard_work(key)
        return result, new_handle

    def _run_export(
        self,
        exporter,
        handle: ModelHandle,
        key: str,
        stage_dir: Path,
        source_outputs: np.ndarray | None,
        source_name: str,
    ) -> StageResult:
        result = StageResult(
            name=f"export:{exporter.label}",
            kind="export",
            step=exporter.name,
            config=exporter.config.model_dump(mode="json"),
            source=source_name,
            artifact=str(stage_dir / "artifact"),
        )
        ctx = self._context(key)
        started = time.perf_counter()
        try:
            # The deploy sample feeds what the model was evaluated on: sentence pairs for a pair model.
            pairs = self.data.eval.pairs is not None
            with self._peak_memory() as memory, atomic_directory(stage_dir / "artifact") as tmp, sample_inputs(pairs):
                exporter.export(handle, ctx, tmp)
            result = result.model_copy(update=memory)
            result.duration_s = time.perf_counter() - started
            runtime = exporter.load_runtime(stage_dir / "artifact", ctx)
        except NotEvaluable as exc:
            result.status, result.message = "not_evaluated", str(exc)
            result.duration_s = time.perf_counter() - started
        except CompressError as exc:
            result.status, result.message, result.artifact = "failed", str(exc), None
        except Exception as exc:  # an exporter bug must not lose the other exports
            log.debug("export %s failed:\n%s", exporter.label, traceback.format_exc())
            result.status, result.message, result.artifact = "failed", f"{type(exc).__name__}: {exc}", None
        else:
            try:
                result = self._evaluate(result, runtime, stage_dir, source_outputs)
            except Exception as exc:
                result.status, result.message = (
                    "failed",
                    f"evaluation in {runtime.name} failed: {type(exc).__name__}: {exc}",
                )
            finally:
                runtime.close()
        if result.status in ("ok", "not_evaluated"):
            self.store.save_result(stage_dir, result)
        return result

    @contextlib.contextmanager
    def _peak_memory(self) -> Iterator[dict[str, float | None]]:
        """Peak process RSS, and on CUDA the allocator's peak, while the block runs (a step or an export).

        Yields a dict that holds the StageResult fields once the block has finished.
        """
        fields: dict[str, float | None] = {}
        cuda = PeakMemory("cuda") if self.device.type == "cuda" else contextlib.nullcontext(None)
        with PeakMemory("cpu") as rss, cuda as gpu:
            yield fields
        fields["step_peak_memory_mb"] = rss.peak_mb
        fields["step_peak_cuda_memory_mb"] = gpu.peak_mb if gpu is not None else None


def _lazy_load(model_dir: Path, device: torch.device) -> Callable[[], ModelHandle]:
    def load() -> ModelHandle:
        from compress.models.serialize import load_handle

        handle = load_handle(model_dir, device)
        handle.saved_dir = model_dir
        return handle

    return load


def _resolved_or_none(recipe: Recipe) -> dict | None:
    try:
        return resolved_recipe(recipe)
    except (TypeError, ValueError) as exc:  # a plugin step whose config holds something JSON cannot (pydantic's)
        log.warning("report: the recipe cannot be written out in full (%s); report.json keeps its name only", exc)
        return None


def _read_previous_report(output_dir: Path) -> RunReport | None:
    from compress.report.json import read_report

    if not (output_dir / "report.json").is_file():
        return None
    try:
        return read_report(output_dir)
    except CompressError:  # unreadable or from an incompatible version: this run rewrites it anyway
        return None


def _delta(result: StageResult, reference: StageResult) -> float | None:
    if result.primary is None or reference.primary is None:
        return None
    return result.primary - reference.primary


def _last_model_stage(stages: list[StageResult]) -> StageResult:
    return next(s for s in reversed(stages) if s.kind != "export")
