"""Budget recipes when the probe's speed is off: the plans of the shared 3D datasets with the measured
rate faked at factors of the device's reference speed (docs/planning.md, "Reproducible recipes").

Each dataset is fingerprinted once (through a temporary raw root of symlinks; nothing is written next to
the shared data), then planned (``build_plans``, 3d_fullres) at every budget and factor with a timing
model that returns the reference rate times the factor, as a host measuring that speed would plan. Within
the tolerance band (8x faster to 2.83x slower) every factor must give one recipe per dataset and budget; only the
iteration count follows the speed. Memory models are measured once into ``--cache``.

Run: ``python benchmarks/recipe_stability.py [--budgets 5m,10m,30m] [--factors 0.125,0.7,1,2.8,2.88] [--write]``
(about 11 minutes on 2 cores for the defaults; ``--write`` replaces its section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from common import markdown_table, temporary_raw_root, write_section

from autoseg.fingerprint.extract import extract_fingerprint
from autoseg.paths import resolve_dataset
from autoseg.planning import compute_budget as T
from autoseg.planning.constants import RECIPE_SPEED_TOLERANCE_SLOWER, RECIPE_SPEED_TOLERANCE_FASTER
from autoseg.planning.planner import build_plans
from autoseg.utils.duration import parse_duration

DATASETS = ("Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset905_BraTS2015Mini")
MEMORY_BYTES = 6 * 2**30


def fingerprint(dataset: str, work: Path) -> dict:
    with temporary_raw_root(dataset) as raw:
        os.environ.update(AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(work / "preprocessed"))
        return extract_fingerprint(resolve_dataset(dataset), output=work / f"{dataset}_fingerprint.json")


def recipe(fp: dict, budget: float, factor: float, cache: Path) -> tuple[str, str, int]:
    """(recipe in words, validation mirroring, planned iterations) of 3d_fullres with the probe at
    ``factor`` x the reference. Mirroring is not part of the recipe: it trains nothing, and the plan
    decides it at the measured speed (docs/planning.md)."""
    rate = T.reference_seconds_per_gflop(torch.device("cpu")) * factor
    timing = lambda dims, width, mixed_precision="auto": T.TimingModel("fake cpu", 0.0, rate, rate)  # noqa: E731
    plan = build_plans(fp, memory_budget_bytes=MEMORY_BYTES, budget_seconds=budget, configs=["3d_fullres"],
                       timing_factory=timing, cache_dir=cache)["configurations"]["3d_fullres"]
    features = plan["network"]["topology"]["features_per_stage"]
    words = (f"{'x'.join(f'{s:.3g}' for s in plan['spacing'])} mm, {'x'.join(map(str, plan['patch_size']))}, "
             f"batch {plan['batch_size']}, {features[0]}-{features[-1]} ({len(features)} stages)")
    return words, "mirrored" if plan["validation_tta"] else "unmirrored", int(plan["num_iterations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="5m,10m,30m")
    parser.add_argument("--factors", default="0.11,0.125,0.2,0.35,0.7,1,2,2.8,2.88,3.5")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "autoseg-recipe-stability-cache")
    parser.add_argument("--write", action="store_true", help="replace the section of docs/benchmarks.md")
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    rows, unstable = [], []
    with tempfile.TemporaryDirectory(prefix="autoseg-recipe-stability-") as tmp:
        for dataset in args.datasets.split(","):
            fp = fingerprint(dataset, Path(tmp))
            for budget_text in args.budgets.split(","):
                budget = parse_duration(budget_text)
                inside: set[str] = set()
                for factor in factors:
                    words, validation, iterations = recipe(fp, budget, factor, args.cache)
                    if 1 / RECIPE_SPEED_TOLERANCE_FASTER <= factor <= RECIPE_SPEED_TOLERANCE_SLOWER:
                        inside.add(words)
                    rows.append([dataset, budget_text, f"{factor:g}x", words, validation, str(iterations)])
                    print(" | ".join(rows[-1]), flush=True)
                if len(inside) > 1:
                    unstable.append(f"{dataset} {budget_text}")
    verdict = ("Within the band every dataset and budget planned one recipe." if not unstable else
               f"**Recipes changed within the band:** {', '.join(unstable)}.")
    body = (f"`python benchmarks/recipe_stability.py --budgets {args.budgets} --factors {args.factors}`: "
            "3d_fullres plans with the probe's rate faked at each factor of the reference "
            f"(usable memory {MEMORY_BYTES / 2**30:g} GiB). "
            f"Tolerance band: {1 / RECIPE_SPEED_TOLERANCE_FASTER:.3g}x-{RECIPE_SPEED_TOLERANCE_SLOWER:.3g}x. {verdict}\n\n"
            + markdown_table(["dataset", "budget", "probe speed", "recipe", "final validation", "planned iterations"], rows))
    print(verdict)
    if args.write:
        write_section("recipe_stability", "Budget recipes under a mis-measured speed (issue 14 §4)", body)


if __name__ == "__main__":
    main()
