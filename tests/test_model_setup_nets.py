"""The network a fold builds from its plan: options of the plan's family, not of another one."""

from __future__ import annotations

from autoseg.networks import Topology
from autoseg.training.config import resolve_config
from autoseg.training.model_setup import NetworkRequest, _topology_and_options, check_network_builds

PATCH = [16, 16, 16]
SEGRESNET_PLAN = {
    "network": {
        "name": "segresnet", "options": {"vae": True},
        "topology": Topology(3, [32, 64, 128], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]).to_dict(),
    },
    "patch_size": PATCH, "spacing": [1.0, 1.0, 1.0],
}


def test_another_family_does_not_take_the_plan_familys_options() -> None:
    """``train --network unet`` on a segresnet plan with ``vae: true`` was refused: unknown option vae."""
    request = NetworkRequest("unet", SEGRESNET_PLAN, 1, 2, PATCH, 2)
    config = resolve_config("unet")
    check_network_builds(request, config)
    _, options = _topology_and_options(request, config, lambda _message: None)
    assert options == {"deep_supervision": True}


def test_the_plan_family_keeps_its_planned_options_under_the_users() -> None:
    request = NetworkRequest("segresnet", SEGRESNET_PLAN, 1, 2, PATCH, 2)
    _, options = _topology_and_options(request, resolve_config("segresnet"), lambda _message: None)
    assert options == {"vae": True, "deep_supervision": True}
    overridden = resolve_config("segresnet", ["network_options={vae: false}"])
    _, options = _topology_and_options(request, overridden, lambda _message: None)
    assert options == {"vae": False, "deep_supervision": True}
