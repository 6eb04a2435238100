"""A few iterations of every registered network on real cases, then the fold's final validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.networks import get_network_spec, list_networks
from autoseg.planning.topology import expand_blocks
from autoseg.training import train_fold
from autoseg.training.checkpoints import load_checkpoint
from autoseg.training.splits import SPLITS_FILE

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

FAST = ["val_iterations_per_epoch=2", "mixed_precision=off"]
# The final validation's 8 mirrored passes per tile are flips of the input, the same for every family:
# U-Net keeps them (mirror_axes recorded, TTA run); the other families validate without mirroring, 8x
# fewer forward passes (FC-DenseNet's design widths, 48-144 maps at full resolution, cost ~20x a tiny U-Net).
NO_MIRROR = ["augmentation.mirror.p=0"]


def _val_cases(data_roots: dict[str, Path]) -> list[str]:
    return json.loads((data_roots["preprocessed"] / DATASET / SPLITS_FILE).read_text())[0]["val"]


@pytest.mark.parametrize(
    ("network", "extra"),
    [(name, [] if name == "unet" else NO_MIRROR) for name in list_networks()
     if 3 in get_network_spec(name).constraints.spatial_dims]  # 3D data
    + [("segresnet", ["network_options={vae: true}", *NO_MIRROR])]
)
def test_every_network_trains_and_validates(
    data_roots: dict[str, Path], results: Path, network: str, extra: list[str]
) -> None:
    summary = train_fold(DATASET, "3d_fullres", 0, network=network, epochs=1, workers=0, overrides=FAST + extra)
    fold = results / DATASET / f"{network}__autosegPlans__3d_fullres" / "fold_0"
    final = load_checkpoint(fold / "checkpoint_final.safetensors")
    assert final["metadata"]["network"] == network and final["metadata"]["iteration"] == 2
    topology = final["metadata"]["topology"]
    if network != "unet":  # the plan is unet's: other families get their own topology rules
        constraints = get_network_spec(network).constraints
        assert topology["blocks_per_stage"] == expand_blocks(constraints.default_blocks_per_stage, len(topology["strides"]))
        if constraints.fixed_features:
            assert topology["features_per_stage"] == list(constraints.fixed_features[: len(topology["strides"])])
        if constraints.stage_features:  # widths derived from the depth (FC-DenseNet)
            assert topology["features_per_stage"] == list(constraints.stage_features(len(topology["strides"])))
    assert final["metadata"]["network_options"].get("vae", False) == any("vae" in e for e in extra)
    assert final["metadata"]["mirror_axes"] == ([] if NO_MIRROR[0] in extra else [0, 1, 2])
    assert summary["iterations"] == 2 and summary["epochs"] == 1
    rows = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["iteration"] == 2
    assert 0 <= rows[0]["pseudo_dice"] <= 1 and rows[0]["train_loss"] > 0
    validation = summary["validation"]
    assert sorted(c["case_id"] for c in validation["metric_per_case"]) == sorted(_val_cases(data_roots))
    assert set(validation["mean"]) == {"Anterior", "Posterior"}
    assert (fold / "progress.png").read_bytes()[:4] == b"\x89PNG"
