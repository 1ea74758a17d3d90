"""A recipe: a model, the user's data, steps, exports, how to evaluate, and the gates. Python or YAML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError

from compress.config import SEED_MAX, DataSpec, EvalSpec, GateSpec, ModelSpec, Schema, format_validation_error
from compress.errors import ECHO_LIMIT, ConfigError, clip, shown
from compress.export.base import Exporter
from compress.registry import EXPORTERS, STEPS
from compress.steps.base import Step

if TYPE_CHECKING:
    from compress.runner import RunResult


class RecipeFile(Schema):
    """The YAML form of a recipe (steps and exports are validated by their own classes' configs)."""

    name: str = Field("recipe", description="Shown in reports.")
    description: str = Field("", description="Free text shown in reports.")
    task: str | None = Field(
        None,
        description="A task file (e.g. `../evals/tasks/sst2.yaml`, relative to this recipe) whose `data` and "
        "`evaluate` sections this recipe starts from; its own sections override field by field.",
    )
    model: ModelSpec = Field(description="The model to compress.")
    data: DataSpec = Field(description="The dataset every stage is evaluated on (and steps train on).")
    evaluate: EvalSpec = Field(default_factory=EvalSpec, description="Metrics, batch sizes, threads, device.")
    steps: list[Any] = Field(default_factory=list, description="Steps in order: `- name: {config}` or a bare `- name`.")
    exports: list[Any] = Field(
        default_factory=list, description="Exports of the final model: `- name: {config}` or a bare `- name`."
    )
    gates: GateSpec = Field(default_factory=GateSpec, description="Recipe-wide quality limit.")
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed for every random choice (sampling, training, calibration)."
    )


class Recipe:
    """Compose steps and exports; `run()` evaluates the baseline and every stage on the user's data."""

    def __init__(
        self,
        model: ModelSpec,
        data: DataSpec,
        steps: list[Step] | None = None,
        exports: list[Exporter] | None = None,
        evaluate: EvalSpec | None = None,
        gates: GateSpec | None = None,
        name: str = "recipe",
        description: str = "",
        seed: int = 0,
        base_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.steps = list(steps or [])
        self.exports = list(exports or [])
        self.evaluate = evaluate or EvalSpec()
        self.gates = gates or GateSpec()
        self.name = name
        self.description = description
        self.seed = seed
        self.base_dir = base_dir or Path.cwd()
        for i, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise ConfigError(f"steps[{i}] is a {type(step).__name__}, not a Step", fix="use cx.steps.<Name>(...)")
            step.base_dir = self.base_dir
        for i, exporter in enumerate(self.exports):
            if not isinstance(exporter, Exporter):
                raise ConfigError(f"exports[{i}] is a {type(exporter).__name__}, not an Exporter")
        self._check_stage_names()

    def _check_stage_names(self) -> None:
        """Stage names key the report and `source:` references, so they must be unique and resolvable."""
        seen = {"baseline"}
        for section, items, prefix in (("steps", self.steps, ""), ("exports", self.exports, "export:")):
            for i, item in enumerate(items):
                name = prefix + item.label
                if name in seen:
                    raise ConfigError(
                        f"two stages are named '{name}'",
                        where=f"{section}[{i}].{item.name}.label",
                        fix="give each repeated step or export its own `label`",
                    )
                seen.add(name)
        step_names = ["baseline", *(step.label for step in self.steps)]
        for i, step in enumerate(self.steps):
            earlier = step_names[: i + 1]
            if step.config.source is not None and step.config.source not in earlier:
                raise ConfigError(
                    f"step source '{step.config.source}' is not an earlier stage of this recipe",
                    where=f"steps[{i}].{step.name}.source",
                    fix=f"use one of: {', '.join(earlier)}",
                )
            for field, stage in step.stage_inputs().items():
                if stage not in earlier:
                    raise ConfigError(
                        f"{step.name} {field} '{stage}' is not an earlier stage of this recipe",
                        where=f"steps[{i}].{step.name}.{field}",
                        fix=f"use one of: {', '.join(earlier)}",
                    )
        for i, exporter in enumerate(self.exports):
            if exporter.config.source is not None and exporter.config.source not in step_names:
                raise ConfigError(
                    f"export source '{exporter.config.source}' is not a stage of this recipe",
                    where=f"exports[{i}].{exporter.name}.source",
                    fix=f"use one of: {', '.join(step_names)}",
                )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
        path = Path(path)
        raw = _read_yaml(path)
        if overrides:
            raw = _apply_overrides(raw, overrides)
        return cls.from_dict(raw, source=path, base_dir=path.parent)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, source: str | Path | None = None, base_dir: Path | None = None
    ) -> Recipe:
        base_dir = base_dir or Path.cwd()
        if raw.get("task"):
            raw = _merge_task(raw, base_dir, source)
        if not isinstance(raw.get("data", {}), dict | str | None):
            raise ConfigError(f"`data` must be a mapping (got {shown(raw['data'])})", where=f"{source}: data")
        try:
            parsed = RecipeFile.model_validate(raw)
        except ValidationError as exc:
            raise format_validation_error(exc, source=source) from None
        steps = [_build(entry, i, "steps", STEPS, source) for i, entry in enumerate(parsed.steps)]
        exports = [_build(entry, i, "exports", EXPORTERS, source) for i, entry in enumerate(parsed.exports)]
        return cls(
            model=parsed.model,
            data=parsed.data,
            steps=steps,
            exports=exports,
            evaluate=parsed.evaluate,
            gates=parsed.gates,
            name=parsed.name,
            description=parsed.description,
            seed=parsed.seed,
            base_dir=base_dir,
        )

    def run(self, output_dir: str | Path, *, resume: bool = True, progress: bool = True) -> RunResult:
        from compress.runner import Runner

        return Runner(self, Path(output_dir), resume=resume, progress=progress).run()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(
            "recipe file not found",
            where=str(path),
            fix="check the path (`compress list` shows bundled recipes)",
        )
    if not path.is_file():
        raise ConfigError("not a file", where=str(path), fix="give the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
            where=str(path),
            fix="save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", where=str(path), fix="check the path") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"not valid YAML: {clip(str(exc), 2 * ECHO_LIMIT)}",
            where=str(path),
            fix="fix the YAML syntax at the line shown",
        ) from None
    except (ValueError, TypeError) as exc:  # a tag whose value does not convert: `!!int 'abc'`
        raise ConfigError(
            f"a YAML tag could not be applied: {clip(str(exc))}", where=str(path), fix="remove the `!!` tags"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"nested more than {MAX_DEPTH} levels deep", where=str(path), fix="flatten the recipe"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a YAML mapping with `model`, `data` and `steps`", where=str(path))
    check_size(raw, str(path))
    return raw


# A recipe is a few hundred values; these bounds stop hostile YAML (deep nesting, alias bombs) before validation
# walks it, and cost nothing for real recipes.
MAX_DEPTH = 64
MAX_NODES = 100_000


def check_size(raw: Any, where: str) -> None:
    """ConfigError when `raw` nests deeper than MAX_DEPTH or holds more than MAX_NODES values (aliases counted
    each time they are used: PyYAML shares the object, but validation and error messages walk every use)."""
    seen = 0
    stack: list[tuple[Any, int]] = [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(
                f"more than {MAX_NODES:,} values (YAML aliases expanding?)",
                where=where,
                fix="write the recipe out plainly",
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", where=where, fix="flatten the recipe")
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
            stack.extend((key, depth + 1) for key in node)
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)


def _merge_task(raw: dict[str, Any], base_dir: Path, source: str | Path | None) -> dict[str, Any]:
    where = f"{source}: task" if source else "task"
    if not isinstance(raw["task"], str):
        raise ConfigError(f"must be the path of a task file (got {shown(raw['task'])})", where=where)
    try:
        task_path = (base_dir / raw["task"]).resolve()
        found = task_path.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ConfigError(f"not a usable path: {clip(str(exc))}", where=where, fix="give a task file's path") from None
    if not found:
        raise ConfigError(f"task file {shown(raw['task'])} not found (looked in {clip(str(task_path))})", where=where)
    task = _read_yaml(task_path)
    merged = dict(raw)
    for section in ("data", "evaluate"):
        if section in task:
            if not isinstance(task[section], dict):
                raise ConfigError(f"`{section}` must be a mapping", where=f"{task_path}: {section}")
            section_value = dict(task[section])
            if section == "data":
                section_value = _rebase_paths(section_value, task_path.parent, base_dir)
            merged[section] = {**section_value, **(raw.get(section) or {})}
    return merged


def _rebase_paths(data: dict[str, Any], task_dir: Path, base_dir: Path) -> dict[str, Any]:
    """Task files name data relative to themselves; the recipe resolves paths relative to its own folder."""

    def rebase(p: str) -> str:
        candidate = task_dir / p
        return str(candidate.resolve()) if candidate.exists() else p

    path = data.get("path")
    if isinstance(path, str):
        data["path"] = rebase(path)
    elif isinstance(path, dict):
        data["path"] = {split: rebase(p) for split, p in path.items()}
    return data


def _build(entry: Any, index: int, section: str, registry: Any, source: str | Path | None) -> Any:
    where_prefix = f"{section}[{index}]"
    if isinstance(entry, str):
        name, config = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, config = next(iter(entry.items()))
        config = config or {}
    else:
        name = None
    if not isinstance(name, str):
        raise ConfigError(
            f"each entry must be `- name` or `- name: {{...}}` with a name as text (got {shown(entry)})",
            where=f"{source}: {where_prefix}" if source else where_prefix,
            fix=f"registered {section}: {', '.join(registry.names())}",
        )
    cls = registry.get(name, where=f"{source}: {where_prefix}" if source else where_prefix)
    if not isinstance(config, dict):
        raise ConfigError(
            f"the config of '{name}' must be a mapping (got {shown(config)})", where=f"{where_prefix}.{name}"
        )
    try:
        return cls(cls.Config.model_validate(config))
    except ValidationError as exc:
        raise format_validation_error(exc, source=source, prefix=f"{where_prefix}.{name}") from None


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `--set data.limit=100` overrides to the raw YAML, before validation so errors name the field."""
    for dotted, value in overrides.items():
        node: Any = raw
        parts = dotted.split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            elif isinstance(node, dict):
                node[parts[-1]] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError, AttributeError):
            raise ConfigError(
                f"cannot set {shown(dotted)}: the path does not lead to a field of this recipe",
                where=f"--set {clip(dotted)}",
                fix="name a field by its YAML path, lists by index (`steps.0.truncate.max_length=64`)",
            ) from None
    return raw
