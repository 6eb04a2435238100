"""A named variant of a plans file that changes one recipe choice, for experiments on one preprocessing.

The budget planner picks width, batch and network family together; measuring what one of them buys at
a fixed budget needs the same plan, the same preprocessed data and one choice changed. This writes
``<NAME>.json`` beside the plans file (the source is never touched), with the given configuration's
first-stage width (every stage's features scaled by the same factor), batch size, network family or
encoder blocks per stage replaced. The variant keeps the source's ``data_identifier``, so it trains on
the preprocessed data already there, and the source's budget, so ``autoseg train ... --plans-name
NAME`` re-plans its iterations from its own measured speed within the same time (docs/benchmarks.md,
"Capacity and batch within the 30-minute Hippocampus budget").

Run: ``python benchmarks/plan_variant.py PRE/Dataset004_Hippocampus/autosegPlans.json autosegPlansW24 --width 24``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any


def variant(plans: dict[str, Any], name: str, configuration: str, width: int | None, batch: int | None,
            network: str | None, blocks: list[int] | None) -> dict[str, Any]:
    """A deep copy of ``plans`` named ``name``, with the given choices of ``configuration`` replaced."""
    result = copy.deepcopy(plans)
    result["plans_name"] = name
    if configuration not in result.get("configurations", {}):
        raise SystemExit(f"configuration {configuration!r} is not in this plans file "
                         f"(it has {sorted(result.get('configurations', {}))})")
    config = result["configurations"][configuration]
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
            raise SystemExit(f"--blocks needs one value per stage ({len(topology['features_per_stage'])})")
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
    target = args.plans.with_name(f"{args.name}.json")
    if target.resolve() == args.plans.resolve():
        sys.exit("the variant needs a name other than the source plans file's")
    plans = variant(json.loads(args.plans.read_text()), args.name, args.configuration, args.width, args.batch,
                    args.network, args.blocks)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(plans, indent=1))
    os.replace(temporary, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
