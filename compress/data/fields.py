"""How a data setting is named in a fix, for `compress run` (the recipe's YAML path) and `compress eval` (a flag).

Data errors are raised in the same code whichever command read the data, so a fix that names only the YAML field
would send an eval user to a recipe they do not have; `setting` names both.
"""

from __future__ import annotations

# The `compress eval` flag that sets each `data.` field (fields without a flag: only a recipe sets them).
EVAL_FLAGS = {
    "data.path": "--data",
    "data.text": "--text",
    "data.text_pair": "--text-pair",
    "data.label": "--label",
    "data.label_names": "--label-names",
    "data.split": "--split",
    "data.header": "--header / --no-header",
    "data.columns": "--columns",
    "data.limit": "--limit",
}


def setting(field: str) -> str:
    """`field` as the user sets it: `data.columns (compress eval: --columns)`; other prefixes (a step's own data
    section) are recipe-only and named as they are."""
    flag = EVAL_FLAGS.get(field)
    return f"{field} (compress eval: {flag})" if flag else field
