"""What the evaluator measures and the runner records for each stage; `report.json` is a list of these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StageKind = Literal["baseline", "step", "export"]
StageStatus = Literal["ok", "gate_failed", "failed", "not_evaluated"]


class LatencyStats(BaseModel):
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    batches: int = Field(description="Timed batches.")
    samples: int = Field(description="Timed samples (rows) over all timed batches.")
    throughput_per_s: float = Field(description="Samples per second over the timed batches.")
    tokenize_ms_per_batch: float = Field(description="Tokenization time, measured apart from inference.")
    mean_tokens_per_sample: float = Field(description="Real (unpadded) tokens per sample.")


class Evaluation(BaseModel):
    """One runtime measured on one dataset."""

    metrics: dict[str, float]
    primary_metric: str
    higher_is_better: bool
    latency: dict[str, LatencyStats] = Field(description="Keyed by batch size.")
    peak_memory_mb: float
    size_mb: float
    num_parameters: int | None
    sparsity: dict[str, float] | None = Field(
        None, description="Share of exactly-zero Linear weights: `overall` and per kind of layer (`q_proj`, …)."
    )
    runtime: str
    device: str
    threads: int
    eval_samples: int
    duration_s: float


class StageResult(BaseModel):
    name: str
    kind: StageKind
    step: str | None = Field(None, description="Registered step or exporter name.")
    config: dict[str, Any] = Field(default_factory=dict)
    status: StageStatus = "ok"
    message: str | None = None
    source: str | None = Field(None, description="The stage this one was made from.")
    metrics: dict[str, float] = Field(default_factory=dict)
    primary_metric: str | None = None
    higher_is_better: bool = True
    latency: dict[str, LatencyStats] = Field(default_factory=dict)
    size_mb: float | None = Field(
        None,
        description="The model on disk: a saved step's weight files, an artifact's model files; the baseline "
        "(never saved by compress) counts its tensors' bytes in memory.",
    )
    num_parameters: int | None = None
    sparsity: dict[str, float] | None = Field(
        None, description="Share of exactly-zero Linear weights: `overall` and per kind of layer (`q_proj`, …)."
    )
    peak_memory_mb: float | None = Field(None, description="Peak memory while the stage was evaluated.")
    step_peak_memory_mb: float | None = Field(
        None, description="Peak process RSS while the step or export ran (not its evaluation)."
    )
    step_peak_cuda_memory_mb: float | None = Field(
        None, description="Peak CUDA memory PyTorch allocated while the step or export ran (runs on CUDA only)."
    )
    duration_s: float = Field(0.0, description="Time to apply the step or export (cached: the original time).")
    eval_duration_s: float | None = None
    runtime: str | None = None
    device: str | None = None
    threads: int | None = None
    eval_samples: int | None = None
    max_abs_diff: float | None = Field(
        None,
        description="Largest difference of the task's outputs vs. the source stage: logits for classification, "
        "per-window mean NLL for causal LM.",
    )
    prediction_agreement: float | None = Field(None, description="Share of argmax predictions equal to the source's.")
    metric_delta: float | None = Field(None, description="Primary metric minus the reference stage's.")
    artifact: str | None = Field(None, description="Directory of this stage's model or exported artifact.")
    details: dict[str, Any] = Field(default_factory=dict, description="What the step found (e.g. truncate's search).")
    cached: bool = False
    measured_under_load: bool | None = Field(
        None,
        description="Whether other work competed for the CPU when this stage was evaluated: other processes kept "
        "busy more than the cores the evaluation left free, plus half a core (`cpu_used_by_others`; the load "
        "average where the OS does not tell); kept with the stage so a cached re-run still reports it. None: not "
        "recorded.",
    )
    cpu_used_by_others: float | None = Field(
        None,
        description="Average cores other processes kept busy while this stage was evaluated (Linux `/proc/stat` "
        "less this process's own CPU time); None where the OS does not tell.",
    )

    @property
    def primary(self) -> float | None:
        return self.metrics.get(self.primary_metric) if self.primary_metric else None

    def apply_evaluation(self, evaluation: Evaluation) -> StageResult:
        fields = evaluation.model_dump(exclude={"duration_s"})
        return self.model_copy(
            update={**fields, "latency": evaluation.latency, "eval_duration_s": evaluation.duration_s}
        )


class ClassFigures(BaseModel):
    """One label's figures on the evaluation split (scikit-learn's definitions; 0 where a class is never
    predicted or never present)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Evaluation rows whose true label is this one.")


class StageClassification(BaseModel):
    """Per-class figures and the confusion matrix of one stage, from its saved outputs (outputs.npy)."""

    stage: str
    per_class: list[ClassFigures] = Field(description="In label-id order.")
    confusion_matrix: list[list[int]] = Field(
        description="Row i, column j: rows of true label i predicted as label j (label-id order)."
    )


class ClassificationReport(BaseModel):
    label_names: list[str] = Field(description="Label names in id order (the ids themselves when the data has none).")
    stages: list[StageClassification]


class DatasetSummary(BaseModel):
    """What the run read: where from, which columns, and how many rows of each split."""

    path: str | dict[str, str]
    name: str | None = Field(None, description="Hub dataset configuration.")
    text: str
    text_pair: str | None = None
    label: str | None = None
    eval_split: str
    eval_rows: int | None = Field(None, description="Rows every stage was evaluated on.")
    train_split: str
    train_rows: int | None = Field(
        None, description="Rows the training steps read; None when no stage read the train split."
    )
    calibration_split: str | None = None


class MachineLoad(BaseModel):
    """The machine's 1-minute load average around the run, to judge whether its latencies are trustworthy."""

    cpu_count: int
    threads: int = Field(description="CPU threads this run's evaluation used.")
    load_1m_start: float | None = Field(None, description="Before any stage ran (None where the OS has none).")
    load_1m_end: float | None = Field(None, description="When this report was written.")
    contended: bool = Field(
        False,
        description="Some stage evaluated in this run was `measured_under_load`.",
    )


class RunReport(BaseModel):
    recipe: str = Field(description="The recipe's name (the full recipe is `resolved_recipe`).")
    created: str
    output_dir: str
    environment: dict[str, Any]
    stages: list[StageResult]
    stopped: str | None = Field(None, description="Why the recipe stopped early, if it did.")
    total_duration_s: float = Field(
        description="Compute time: every stage's step and evaluation time, cached stages at their original time "
        "(reports written before `wall_duration_s` existed hold the run's wall time here)."
    )
    wall_duration_s: float | None = Field(None, description="How long this invocation took (a cached re-run: seconds).")
    resolved_recipe: dict[str, Any] | None = Field(
        None, description="The recipe as run: every section with its defaults filled in, in the YAML's shape."
    )
    dataset: DatasetSummary | None = None
    classification: ClassificationReport | None = None
    machine_load: MachineLoad | None = None
