"""Student sweep: the flagship's teacher, then one distill variant after another; student accuracy on SST-2 dev.

    python benchmarks/sweep_students.py --gpu --model <MiniLM dir> base aug4 2x320_aug4 ...

Runs the first two stages of recipes/distill-bert-then-int8.yaml (teacher, student) with the variant's distill
settings; the teacher stage is cached, so each variant costs only its distillation. Rows are appended to
benchmarks/results/distill-students[-gpu].jsonl, so a sweep can be split over several calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import yaml
from recipe_bench import REPO

from compress import Recipe
from compress.environment import environment

TRAIN = str(REPO / "evals/data/sst2/train.tsv")
TRANSFER = {"unlabeled": TRAIN, "unlabeled_column": "sentence"}  # all 67k train sentences, teacher-labelled
AUG4 = {"augment": {"copies": 4}}
S224 = {"num_layers": 3, "hidden_size": 224, "num_heads": 7, "intermediate_size": 896}
S192 = {"num_layers": 3, "hidden_size": 192, "num_heads": 6, "intermediate_size": 768}
S320 = {"num_layers": 2, "hidden_size": 320, "num_heads": 10, "intermediate_size": 640}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # the previous flagship student: 2 × 256, ffn 1024
    "ep8": {"epochs": 8},
    "aug4": AUG4,
    "transfer": TRANSFER,
    "transfer_ep2": TRANSFER | {"epochs": 2},
    "transfer_kd": TRANSFER | {"alpha_kd": 1.0, "alpha_ce": 0.0},
    "4x192": {"student": {"num_layers": 4, "hidden_size": 192, "num_heads": 6, "intermediate_size": 768}},
    "3x192": {"student": S192},
    "3x192_aug4": AUG4 | {"student": S192},
    "3x192_aug4_bs64": AUG4 | {"student": S192, "batch_size": 64, "learning_rate": 1e-3},
    "3x224": {"student": S224},
    "3x224_aug4": AUG4 | {"student": S224},
    "3x224_aug4_seed1": AUG4 | {"student": S224, "seed": 1},
    "3x224_aug4_ep2": AUG4 | {"student": S224, "epochs": 2},
    "3x224_transfer": TRANSFER | {"student": S224},
    "3x256f512_aug4": AUG4
    | {"student": {"num_layers": 3, "hidden_size": 256, "num_heads": 8, "intermediate_size": 512}},
    "2x384f384_aug4": AUG4 | {"student": {"num_layers": 2, "intermediate_size": 384}},
    "2x320f640_aug4": AUG4 | {"student": S320},
    "2x320_aug4_frozen": AUG4 | {"student": S320, "freeze_embeddings": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--gpu", action="store_true", help="train and evaluate on CUDA")
    parser.add_argument("--model", default=None, help="override model.source (e.g. a local copy)")
    args = parser.parse_args()
    raw0 = yaml.safe_load((REPO / "recipes/distill-bert-then-int8.yaml").read_text())
    # The sweep starts from the previous flagship student, so each variant names only what it changes.
    raw0["steps"] = raw0["steps"][:2]
    raw0["steps"][1]["distill"] = {
        "label": "student",
        "student": {"num_layers": 2, "hidden_size": 256, "num_heads": 8, "intermediate_size": 1024},
        "epochs": 4,
        "learning_rate": 5.0e-4,
        "temperature": 2.0,
        "alpha_kd": 0.7,
        "alpha_ce": 0.3,
        "max_length": 64,
    }
    raw0["exports"], raw0["gates"] = [], {}
    raw0["evaluate"] = {"batch_sizes": [32], "latency_samples": 64, "device": "cuda" if args.gpu else "cpu"}
    if args.model:
        raw0["model"]["source"] = args.model
    out = REPO / "benchmarks/results" / f"distill-students{'-gpu' if args.gpu else ''}.jsonl"
    env = environment()
    for name in args.variants:
        raw = copy.deepcopy(raw0)
        raw["steps"][1]["distill"].update(VARIANTS[name])
        started = time.time()
        result = Recipe.from_dict(raw, source="sweep", base_dir=REPO / "recipes").run("runs/sweep", progress=False)
        stages = {s.name: s for s in result.report.stages}
        row = {
            "variant": name,
            "distill": VARIANTS[name],
            "teacher": stages["teacher"].metrics["accuracy"],
            "student": stages["student"].metrics["accuracy"],
            "distill_s": stages["student"].duration_s,
            "wall_s": time.time() - started,
            "environment": env,
        }
        print(json.dumps({k: row[k] for k in ("variant", "teacher", "student", "distill_s")}), flush=True)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
