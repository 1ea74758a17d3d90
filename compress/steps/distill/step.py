"""The distill step: train a smaller student on the teacher's outputs (and the labels)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compress.config import ModelSpec
from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.io import user_path
from compress.models.handle import ModelHandle
from compress.models.load import load_model
from compress.models.source import PYPI_PREFIX
from compress.steps.base import StageContext, Step
from compress.steps.distill.augment import augment_texts, nearest_neighbours, replaceable_words
from compress.steps.distill.capture import captured_qkv, qkv_widths
from compress.steps.distill.config import (
    AugmentSettings,
    DistillConfig,
    LayerStudent,
    PrunedStudent,
    SmallerStudent,
    StudentSpec,
)
from compress.steps.distill.objective import DistillationObjective, LossWeights, TeacherOutputs
from compress.steps.distill.student import encoder_layers, select_layers, smaller_student
from compress.steps.distill.teacher_cache import cached_teacher_logits
from compress.steps.distill.unlabeled import read_unlabeled
from compress.steps.finetune import check_labels, require_training_task
from compress.steps.prune.structured import layer_widths, prune_structure, structure_transform, unit_statistics
from compress.train import forward_inputs, tokenize_rows, train
from compress.train.batches import IGNORE_LABEL
from compress.train.fingerprint import hash_json, model_fingerprint, path_fingerprint, tokenizer_fingerprint


class Distill(Step):
    """Knowledge distillation of a text classifier into a student with fewer or narrower layers."""

    name: ClassVar[str] = "distill"
    Config = DistillConfig
    config: DistillConfig

    def cache_key(self) -> dict[str, Any]:
        """The stage key holds the bytes of every file the step reads, not only their names: a cached stage is
        reused without `apply` running, so an edited unlabeled file or a retrained local teacher must change it."""
        key = super().cache_key()
        if self.config.unlabeled is not None:
            path = user_path(self.config.unlabeled, f"{self.name}.unlabeled", self.base_dir or Path.cwd())
            key["unlabeled_sha256"] = path_fingerprint(path)
        sources = {"teacher": self.config.teacher, "student": getattr(self.config.student, "source", None)}
        for role, source in sources.items():
            folder = _local_model_folder(source)
            if folder is not None:
                key[f"{role}_sha256"] = path_fingerprint(folder)
        return key

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        cfg = self.config.model_copy(update={"progress": self.config.progress and self.progress})
        seed = cfg.seed if cfg.seed is not None else ctx.seed
        teacher_handle = self._teacher(model)
        # The incoming model is the teacher itself, not a copy: it is frozen and only read, and the step
        # returns a new student (the runner treats the incoming stage as consumed either way).
        teacher = teacher_handle.model.float().eval().requires_grad_(False)
        set_seed(seed)
        student, tokenizer = build_student(cfg.student, teacher, teacher_handle, seed, ctx)
        student.requires_grad_(True)  # a student copied from the teacher inherits its frozen flags
        student.get_input_embeddings().requires_grad_(not cfg.freeze_embeddings)
        data = self._training_data(ctx, teacher, teacher_handle.tokenizer, seed)
        online = cfg.alpha_hidden > 0 or cfg.alpha_attn > 0 or cfg.alpha_relations > 0
        if online and tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(teacher_handle.tokenizer):
            raise ConfigError(
                "hidden-state, attention and relation transfer need the student to share the teacher's tokenizer",
                where="steps.distill.student.source",
                fix="set alpha_hidden, alpha_attn and alpha_relations to 0, or use a student with the teacher's "
                "vocabulary",
            )
        attn_implementation = student.config._attn_implementation
        teacher_attn_implementation = teacher.config._attn_implementation
        if cfg.alpha_attn > 0:  # fused attention kernels do not return the attention probabilities
            teacher.set_attn_implementation("eager")
            student.set_attn_implementation("eager")

        cached = None if online else self._cached_logits(teacher, teacher_handle.tokenizer, data, ctx)
        objective = DistillationObjective(
            student,
            teacher.config,
            LossWeights(cfg.alpha_kd, cfg.alpha_ce, cfg.alpha_hidden, cfg.alpha_attn, cfg.alpha_relations),
            cfg.temperature,
            cfg.attention_loss,
            cfg.relation_heads,
        )
        relation_layer = cfg.relation_layer if cfg.alpha_relations > 0 else None
        if relation_layer is not None:
            check_relation_heads(student, teacher, relation_layer, cfg.relation_heads)

        def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = forward_inputs(student, batch)
            if cached is not None:
                outputs = TeacherOutputs(cached[batch["index"].cpu()].to(batch["input_ids"].device))
            else:
                outputs = run_teacher(teacher, inputs, cfg.alpha_hidden > 0, cfg.alpha_attn > 0, relation_layer)
            return module(inputs, batch["labels"], outputs)

        def evaluate(trained: torch.nn.Module) -> dict[str, float]:
            # Scored as it is, on its device; the training loop puts it back in train mode afterwards.
            return ctx.score(model.replace(model=trained.student, tokenizer=tokenizer, transforms=[]))

        key = hash_json(
            [
                "distill",
                model_fingerprint(teacher),
                model_fingerprint(objective),
                tokenizer_fingerprint(tokenizer),
                data.fingerprint(),
            ]
        )
        result = train(
            objective,
            tokenize_rows(data, tokenizer, cfg.max_length),
            loss_fn,
            cfg,
            work_dir=ctx.work_dir,
            key=key,
            pad_token_id=tokenizer.pad_token_id or 0,
            device=ctx.device,
            seed=seed,
            evaluate=evaluate,
            description="distill",
        )
        trained: PreTrainedModel = result.model.student
        if cfg.alpha_attn > 0:
            trained.set_attn_implementation(attn_implementation)
            teacher.set_attn_implementation(teacher_attn_implementation)  # the teacher is the caller's model
        # A pruned student's layers may differ in width: the saved stage records their shapes.
        transforms = []
        if isinstance(cfg.student, PrunedStudent):
            transforms = [structure_transform(trained)]
            self._details = {"student": layer_widths(trained)}
        return model.replace(model=trained.cpu().float().eval(), tokenizer=tokenizer, transforms=transforms)

    def _teacher(self, model: ModelHandle) -> ModelHandle:
        if self.config.teacher is None:
            require_training_task(model, "distill")
            if model.transforms:
                names = ", ".join(t["name"] for t in model.transforms)
                raise ConfigError(
                    f"the incoming model was already transformed ({names}); distill needs a float teacher",
                    where="steps.distill",
                    fix="put distill before quantization steps, or name a float model in `teacher`",
                )
            return model
        spec = ModelSpec(self.config.teacher, num_labels=model.model.config.num_labels)
        return load_model(spec, model.label_names)

    def _training_data(
        self, ctx: StageContext, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> TextData:
        """The train split, then unlabeled and augmented texts (label -100: learned from the teacher alone)."""
        data = ctx.train_data()
        check_labels(data, teacher.config.num_labels, "distill")
        if data.pairs is not None and (self.config.unlabeled or self.config.augment):
            raise ConfigError(
                "unlabeled and augmented text cannot be added to a sentence-pair task",
                where="steps.distill.unlabeled" if self.config.unlabeled else "steps.distill.augment",
                fix="remove `unlabeled` and `augment`, or distill on the train split alone",
            )
        extra: list[str] = []
        if self.config.unlabeled is not None:
            path = user_path(self.config.unlabeled, f"{self.name}.unlabeled", ctx.base_dir)
            extra += read_unlabeled(path, self.config.unlabeled_column, self.config.unlabeled_limit)
        if self.config.augment is not None:
            extra += augmented_copies(data.texts, tokenizer, teacher, self.config.augment, seed)
        if not extra:
            return data
        sources = [data.source, self.config.unlabeled, "augmented" if self.config.augment else None]
        return TextData(
            texts=data.texts + extra,
            labels=[*(data.labels or []), *([IGNORE_LABEL] * len(extra))],
            label_names=data.label_names,
            source="+".join(s for s in sources if s),
            split=data.split,
        )

    def _cached_logits(
        self, teacher: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: TextData, ctx: StageContext
    ) -> torch.Tensor:
        state = PartialState()
        device = state.device if state.num_processes > 1 else ctx.device
        with state.main_process_first():  # one process runs the teacher; the others read its file
            logits = cached_teacher_logits(
                teacher,
                tokenizer,
                data,
                max_length=self.config.max_length,
                batch_size=self.config.teacher_batch_size,
                device=device,
                cache_dir=ctx.work_dir / "teacher",
                progress=self.config.progress and self.progress and state.is_local_main_process,
            )
        teacher.cpu()  # not needed on the accelerator any more
        return logits


def _local_model_folder(source: str | None) -> Path | None:
    """The folder a model source names when it is one, read as `load_model` reads it (from the working
    directory); hub names and `pypi:` packages are keyed by their name."""
    if source is None or source.startswith(PYPI_PREFIX):
        return None
    path = user_path(source, "steps.distill")
    return path if path.is_dir() else None


def augmented_copies(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    teacher: PreTrainedModel,
    settings: AugmentSettings,
    seed: int,
) -> list[str]:
    words = replaceable_words(texts, tokenizer)
    neighbours = nearest_neighbours(words, tokenizer, teacher.get_input_embeddings().weight, settings.neighbours)
    return augment_texts(texts, neighbours, settings.copies, settings.replace_prob, seed)


def build_student(
    spec: StudentSpec, teacher: PreTrainedModel, teacher_handle: ModelHandle, seed: int, ctx: StageContext
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if isinstance(spec, LayerStudent):
        return select_layers(teacher, spec.layers), teacher_handle.tokenizer
    if isinstance(spec, SmallerStudent):
        student = smaller_student(
            teacher,
            spec.num_layers,
            spec.hidden_size,
            spec.num_heads,
            spec.intermediate_size,
            seed=seed,
            init=spec.init,
            layers=spec.layers,
        )
        return student, teacher_handle.tokenizer
    if isinstance(spec, PrunedStudent):
        activations = None
        if spec.structured.importance == "activations":  # measured on the teacher, which the student copies
            activations = unit_statistics(teacher_handle, spec.structured, ctx, "steps.distill.student.structured")
        student = copy.deepcopy(teacher)
        prune_structure(student, spec.structured, "steps.distill.student.structured", activations)
        return student, teacher_handle.tokenizer
    loaded = load_model(ModelSpec(spec.source, num_labels=teacher.config.num_labels), teacher_handle.label_names)
    encoder_layers(loaded.model)  # layer-wise losses need to know its layers
    return loaded.model.float(), loaded.tokenizer


def check_relation_heads(student: torch.nn.Module, teacher: torch.nn.Module, layer: int, heads: int) -> None:
    """Before training: the relation heads must split every Q/K/V width, and the teacher must have that layer."""
    teacher_layers = teacher.config.num_hidden_layers
    if not -teacher_layers <= layer < teacher_layers:
        raise ConfigError(
            f"relation_layer {layer} is outside the teacher's {teacher_layers} layers",
            where="steps.distill.relation_layer",
            fix=f"use 0…{teacher_layers - 1}, or -1 for the last",
        )
    widths = sorted({*qkv_widths(student, -1), *qkv_widths(teacher, layer)})
    if any(width % heads for width in widths):
        raise ConfigError(
            f"relation_heads {heads} does not divide the Q/K/V widths {widths}",
            where="steps.distill.relation_heads",
            fix="pick a divisor of every width (e.g. the greatest common divisor's factors)",
        )


@torch.no_grad()
def run_teacher(
    teacher: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    hidden: bool,
    attentions: bool,
    relation_layer: int | None = None,
) -> TeacherOutputs:
    """The teacher's outputs the losses read; `relation_layer`: also that layer's Q, K, V projections."""
    device = inputs["input_ids"].device
    if next(teacher.parameters()).device != device:
        teacher.to(device)
    capture = captured_qkv(teacher, relation_layer) if relation_layer is not None else contextlib.nullcontext(None)
    with capture as qkv:
        out = teacher(**inputs, output_hidden_states=hidden, output_attentions=attentions, return_dict=True)
    return TeacherOutputs(out.logits, out.hidden_states, out.attentions, qkv)
