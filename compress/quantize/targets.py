"""Which Linear modules a quantization step touches, written as compressed-tensors writes targets.

An entry is a class name (`Linear`), an exact module name (`lm_head`), or `re:<regex>` matched against the
module's qualified name from its start (`re:.*mlp\\..*`). A module is selected when it matches a target and
no ignore entry. The same strings go into the checkpoint's `quantization_config`, so transformers and vLLM
select the same modules when they load it.
"""

from __future__ import annotations

import re

import torch

from compress.errors import ConfigError


def matches(name: str, module: torch.nn.Module, entry: str) -> bool:
    if entry.startswith("re:"):
        return re.match(entry[3:], name) is not None
    return entry in (name, type(module).__name__)


def check_patterns(entries: list[str], where: str) -> None:
    for index, entry in enumerate(entries):
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ConfigError(
                    f"'{entry}' is not a valid regular expression: {exc}",
                    where=f"{where}[{index}]",
                    fix="write `re:` followed by a Python regular expression, e.g. `re:.*mlp\\..*`",
                ) from None


def select_linears(
    model: torch.nn.Module, targets: list[str], ignore: list[str], where: str
) -> dict[str, torch.nn.Linear]:
    """Linear modules matching `targets` and no `ignore` entry; ConfigError when nothing matches."""
    selected = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(matches(name, module, t) for t in targets)
        and not any(matches(name, module, i) for i in ignore)
    }
    if not selected:
        raise ConfigError(
            f"no Linear module matches targets {targets} (minus ignore {ignore})",
            where=f"{where}.targets",
            fix="use `Linear` for every Linear layer, a module name, or `re:<regex>` over module names",
        )
    return selected
