"""A named variant of a plans file that changes one recipe choice, for experiments on one preprocessing.

The budget planner picks width, batch and network family together; measuring what one of them buys at
a fixed budget needs the same plan, the same preprocessed data and one choice changed. This writes
``<NAME>.json`` beside the plans file (the source is never touched), with the given configuration's
first-stage width (every stage's features scaled by the same factor), batch size, network family or
encoder blocks per stage replaced. The variant keeps the source's ``data_identifier``, so it trains on
the preprocessed data already there, and the source's budget, so ``autoseg train ... --plans-name
NAME`` re-plans its iterations from its own measured speed within the same time (docs/benchmarks.md,
"AdamW for short schedules": "Capacity, batch and augmentation within the 30 minutes").

Run: ``python benchmarks/plan_variant.py PRE/Dataset004_Hippocampus/autosegPlans.json autosegPlansW24 --width 24``
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from autoseg.errors import PlanError
from autoseg.planning.plans import get_configuration, load_plans, plans_path, write_plans


def variant(plans: dict[str, Any], name: str, configuration: str, width: int | None, batch: int | None,
            network: str | None, blocks: list[int] | None) -> dict[str, Any]:
    """A deep copy of ``plans`` named ``name``, with the given choices of ``configuration`` replaced."""
    result = copy.deepcopy(plans)
    result["plans_name"] = name
    config = get_configuration(result, configuration)
    topology = config["network"]["topology"]
    if width is not None:
        old = topology["features_per_stage"][0]
        topology["features_per_stage"] = [f * width // old for f in topology["features_per_stage"]]
        config["width"] = width
    if batch is not None:
        config["batch_size"] = batch
    if network is not None:
        config["network"]["name"] = network
    if blocks is not None:
        if len(blocks) != len(topology["features_per_stage"]):
            raise PlanError(f"--blocks needs one value per stage ({len(topology['features_per_stage'])})")
        topology["blocks_per_stage"] = blocks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", type=Path, help="the plans file the planner wrote")
    parser.add_argument("name", help="the variant's plans name (autoseg train --plans-name NAME)")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("--width", type=int, help="first-stage features (the others scale along)")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--network", help="network family, e.g. resenc")
    parser.add_argument("--blocks", type=int, nargs="+", help="encoder blocks per stage, e.g. 1 3 4 6")
    args = parser.parse_args()
    target = plans_path(args.plans.parent, args.name)
    if target.resolve() == args.plans.resolve():
        sys.exit("the variant needs a name other than the source plans file's")
    try:
        plans = variant(load_plans(args.plans), args.name, args.configuration, args.width, args.batch,
                        args.network, args.blocks)
        write_plans(plans, target, overwrite=True)
    except PlanError as error:
        sys.exit(str(error))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
