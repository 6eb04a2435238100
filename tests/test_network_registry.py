"""The registry owns every family: discovery, the builder contract, option checks, training hooks, the CLI list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import autoseg
from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, default_network, get_network_spec, list_networks, registry
from autoseg.training.config import resolve_config

PACKAGE = Path(autoseg.__file__).parent
TOPOLOGY = Topology(2, [4, 8], [[3, 3]] * 2, [[1, 1], [2, 2]])


@pytest.fixture()
def scratch_registry(monkeypatch):
    """The real registry, copied: families registered by a test vanish after it."""
    registry.list_networks()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def test_every_family_module_is_discovered_without_being_imported_by_hand():
    declared = set()
    for path in (PACKAGE / "networks").glob("*.py"):
        declared |= set(re.findall(r'@register_network\(\s*"(\w+)"', path.read_text()))
    code = "from autoseg.networks.registry import list_networks; print(' '.join(list_networks()))"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert declared and set(listed) == declared == set(list_networks())
    import autoseg.networks as package

    assert set(package._EXPORTS.values()) == {"registry", "topology"}  # no family imported by hand


def test_no_family_name_appears_outside_its_own_module():
    for name in list_networks():
        home = Path(sys.modules[get_network_spec(name).builder.__module__].__file__)
        for path in PACKAGE.rglob("*.py"):
            if path != home:
                text = path.read_text()
                assert f'"{name}"' not in text and f"'{name}'" not in text, f"{name!r} is named in {path}"


def test_the_cli_lists_the_registry():
    from autoseg.cli import app

    result = CliRunner().invoke(app, ["networks"])
    assert result.exit_code == 0
    for name in list_networks():
        spec = get_network_spec(name)
        assert f"{name}{' (default)' if spec.default else ''}  [" in result.output
        assert spec.paper in result.output
    assert "options: deep_supervision, slice_axis, dropout" in result.output  # conresnet's builder


def test_plan_refuses_an_unknown_network_before_touching_the_dataset(tmp_path, monkeypatch):
    from autoseg.cli import app

    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path))
    result = CliRunner().invoke(app, ["plan", "Dataset004", "--network", "unett"])
    assert result.exit_code == 2
    assert "autoseg: error: unknown network 'unett'; choose one of: conresnet, " in result.output
    assert list(tmp_path.iterdir()) == []


def test_exactly_one_default_family_and_it_is_nnunets_unet():
    assert default_network() == "unet"
    assert [name for name in list_networks() if get_network_spec(name).default] == ["unet"]


def test_unknown_network_lists_the_registry():
    with pytest.raises(NetworkError, match=r"unknown network 'unett'; choose one of: conresnet, .*unet, vnet"):
        get_network_spec("unett")


# ----------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("unet", {"vae": True}, r"network 'unet': unknown option\(s\) vae; it takes deep_supervision \("),
        ("conresnet", {"slice_axes": 1, "drop": 0.1}, r"unknown option\(s\) drop, slice_axes; it takes deep_supervision, dropout, slice_axis"),
        ("conresnet", {"dropout": "high"}, r"network 'conresnet': option dropout must be float, got 'high'; fix it in --set network_options.dropout="),
        ("unet", {"deep_supervision": 1}, r"option deep_supervision must be bool, got 1"),
        ("conresnet", {"slice_axis": 1.0}, r"option slice_axis must be int, got 1.0"),
        # a dropout outside [0, 1] was torch's bare ValueError, reported as an internal error
        ("segresnet", {"dropout": 1.5}, r"network 'segresnet': option dropout is a probability and must lie in \[0, 1\], got 1.5"),
        ("conresnet", {"dropout": -0.1}, r"option dropout is a probability and must lie in \[0, 1\], got -0.1"),
        ("vox2vox", {"dropout": float("nan")}, r"option dropout is a probability and must lie in \[0, 1\], got nan"),
    ],
)
def test_bad_options_are_user_errors_with_the_accepted_list(name, options, message):
    topology = Topology(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    with pytest.raises(NetworkError, match=message):
        create_network(name, topology, 1, 2, **options)


def test_integer_values_are_accepted_for_float_options():
    topology = Topology(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    assert create_network("conresnet", topology, 1, 2, dropout=0).train() is not None


def test_a_bug_inside_a_builder_surfaces_as_the_bug(scratch_registry):
    @scratch_registry.register_network("buggy", paper="-", description="-")
    def build(topology, in_channels, n_classes, *, deep_supervision=True, width: int = 4):
        return nn.Conv2d(in_channels, n_classes, "3")  # TypeError inside torch, not the user's fault

    with pytest.raises(TypeError):
        create_network("buggy", TOPOLOGY, 1, 2, width=8)
    with pytest.raises(NetworkError, match=r"unknown option\(s\) depth; it takes deep_supervision, width"):
        create_network("buggy", TOPOLOGY, 1, 2, depth=8)


def test_a_builder_taking_any_keyword_gets_every_option(scratch_registry):
    @scratch_registry.register_network("open", paper="-", description="-")
    def build(topology, in_channels, n_classes, **options):
        return nn.Conv2d(in_channels, n_classes + len(options), 1)

    assert create_network("open", TOPOLOGY, 1, 2, a=1, b=2).out_channels == 4


def test_an_integer_for_a_text_option_becomes_its_digits(scratch_registry):
    @scratch_registry.register_network("variants", paper="-", description="-")
    def build(topology, in_channels, n_classes, *, deep_supervision=True, variant: str = "56"):
        return nn.Conv2d(in_channels, int(variant), 1)  # YAML reads --set network_options.variant=67 as 67

    assert create_network("variants", TOPOLOGY, 1, 2, variant=67).out_channels == 67
    with pytest.raises(NetworkError, match="option variant must be str, got 6.7"):
        create_network("variants", TOPOLOGY, 1, 2, variant=6.7)


def test_a_required_option_must_be_given(scratch_registry):
    @scratch_registry.register_network("needs_depth", paper="-", description="-")
    def build(topology, in_channels, n_classes, *, deep_supervision=True, depth: int):
        return nn.Conv2d(in_channels, n_classes, 1)

    with pytest.raises(NetworkError, match=r"network 'needs_depth': option\(s\) depth must be given"):
        create_network("needs_depth", TOPOLOGY, 1, 2)


# ----------------------------------------------------------------------------------- registration


def _builder(topology, in_channels, n_classes, *, deep_supervision=True):
    return nn.Identity()


@pytest.mark.parametrize(
    ("builder", "kwargs", "message"),
    [
        (_builder, {}, "network 'unet' is registered twice"),
        (lambda topo, channels, classes, *, deep_supervision=True: None, {}, r"must start with \('topology'"),
        (lambda topology, in_channels, n_classes: None, {}, "must accept the keyword 'deep_supervision'"),
        (_builder, {"default": True}, "another family is already the default"),
        (
            _builder,
            {"adversary": registry.Adversary(lambda c, k: nn.Identity(), torch.sub, torch.add), "training_defaults": {}},
            r"an adversary needs training_defaults\['adversarial'\] with \['discriminator_lr', 'discriminator_betas'\]",
        ),
        (
            _builder,
            {"constraints": registry.TopologyConstraints(default_blocks_per_stage=(2,), block_settings=())},
            "network 'newcomer': default_blocks_per_stage is set but block_settings lacks 'blocks_per_stage'",
        ),
        (
            _builder,
            {"constraints": registry.TopologyConstraints(block_settings=("blocks",))},
            r"network 'newcomer': block_settings \['blocks'\] are none of \('blocks_per_stage', 'decoder_blocks_per_stage'\)",
        ),
    ],
)
def test_registration_checks_the_family_contract(scratch_registry, builder, kwargs, message):
    name = "unet" if "twice" in message else "newcomer"
    with pytest.raises(ValueError, match=message):
        scratch_registry.register_network(name, paper="-", description="-", **kwargs)(builder)
    assert "newcomer" not in scratch_registry._REGISTRY


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_slices", 0, r"TopologyConstraints.min_slices must be a whole number >= 1, not 0"),
        ("min_slices", -2, r"TopologyConstraints.min_slices must be a whole number >= 1, not -2"),
        ("kernel_size", 0, r"TopologyConstraints.kernel_size must be a whole number >= 1, not 0"),
        ("max_stages", 0, r"TopologyConstraints.max_stages must be a whole number >= 1, not 0"),
        ("stem_stride", -4, r"TopologyConstraints.stem_stride must be a whole number >= 1, not -4"),
        ("window_size", 2.5, r"TopologyConstraints.window_size must be a whole number >= 1, not 2.5"),
        ("max_features", True, r"TopologyConstraints.max_features must be a whole number >= 1, not True"),
        ("fixed_features", (32, 0), r"TopologyConstraints.fixed_features must be whole numbers >= 1, at least one, not \(32, 0\)"),
        ("default_blocks_per_stage", (), r"TopologyConstraints.default_blocks_per_stage must be whole numbers >= 1, at least one, not \(\)"),
        ("spatial_dims", (1, 3), r"TopologyConstraints.spatial_dims must hold 2, 3 or both, not \(1, 3\)"),
    ],
)
def test_senseless_constraints_are_refused_at_registration(scratch_registry, field, value, message):
    constraints = registry.TopologyConstraints(**{field: value})
    with pytest.raises(ValueError, match=f"^network 'newcomer': {message}$"):
        scratch_registry.register_network("newcomer", paper="-", description="-", constraints=constraints)(_builder)
    assert "newcomer" not in scratch_registry._REGISTRY


def test_sensible_constraints_still_register(scratch_registry):
    constraints = registry.TopologyConstraints(min_slices=2, kernel_size=5, max_stages=4, fixed_features=(16, 32),
                                               window_size=7, stem_stride=4, spatial_dims=(3,))
    scratch_registry.register_network("newcomer", paper="-", description="-", constraints=constraints)(_builder)
    assert scratch_registry._REGISTRY["newcomer"].constraints.min_slices == 2


# ----------------------------------------------------------------------------------- training hooks


def test_training_defaults_come_from_the_family_and_overrides_win():
    assert get_network_spec("vox2vox").training_defaults["lr_schedule"] == {"name": "constant"}
    config = resolve_config("vox2vox", ["adversarial.discriminator_lr=1e-3"])
    assert config["adversarial"] == {"discriminator_lr": 0.001, "discriminator_betas": [0.5, 0.999]}
    assert "adversarial" not in resolve_config("unet")  # no setting that does nothing for other families
    with pytest.raises(TypeError):
        get_network_spec("vox2vox").training_defaults["grad_clip"] = 1.0  # read-only: resolve_config copies it


def test_hooks_are_declared_by_the_families_that_need_them():
    hooks = {name: (spec.auxiliary_loss is not None, spec.adversarial) for name in list_networks() for spec in [get_network_spec(name)]}
    assert hooks["segresnet"] == (True, False) and hooks["conresnet"] == (True, False)
    assert hooks["vox2vox"] == (False, True) and hooks["unet"] == (False, False)


def test_reading_a_plans_file_does_not_import_torch():
    """The plans checks use ``networks.topology``; a torch-free deployment still reads plans (docs/interop.md)."""
    code = "import sys, autoseg.planning.plans; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
