"""The one network registry: every family declares here everything the rest of autoseg needs of it.

Modelled on timm's ``register_model`` / ``create_model``: a family module decorates its builder with
``@register_network(...)``, passing its topology constraints, training defaults and training hooks
(an auxiliary loss, an adversary). The planner, the trainer, the CLI and the tests ask the registry;
none of them names a family. Family modules are discovered by importing every module of this
package, so adding a family is adding a file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.topology import Topology

Builder = Callable[..., nn.Module]
# (network, auxiliary outputs of forward_with_aux, input image, (B, C, *) one-hot/region target) -> loss
# (network, aux outputs, image, binary target, annotated mask or None) -> loss; the mask (B, 1, *) is 1 where
# the voxel is annotated, 0 on the dataset's ignore label (None without one): ignored voxels must not count.
AuxiliaryLoss = Callable[
    [nn.Module, Mapping[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor
]
# Builder arguments every family takes before its options.
_POSITIONAL = ("topology", "in_channels", "n_classes")
# The option the trainer always passes (docs/adding-a-network.md).
_ALWAYS_PASSED = "deep_supervision"
# Option values checked against the builder's annotation (richer annotations are the builder's job).
_SCALAR_TYPES = (bool, int, float, str)
# The training-config keys the adversarial step reads (an adversarial family must default them).
ADVERSARIAL_CONFIG_KEYS = ("discriminator_lr", "discriminator_betas")
# Options every family uses as a probability (torch's dropout layers take [0, 1] only).
_PROBABILITY_OPTIONS = ("dropout",)
# The topology's block counts (``Topology`` fields) a family may read; one it does not read is refused.
BLOCK_SETTINGS = ("blocks_per_stage", "decoder_blocks_per_stage")


@dataclass(frozen=True)
class TopologyConstraints:
    """What a network family demands of the topology the planner gives it.

    Args:
        spatial_dims: the dimensionalities the design supports (``(3,)`` for 3D-only designs).
        max_stages: upper bound on the number of resolution stages (``None``: no bound).
        fixed_features: if set, the features per stage the design prescribes (the planner uses
            them instead of its own doubling rule, truncated to the number of stages).
        default_blocks_per_stage: encoder blocks per stage the design prescribes (repeated with its
            last value when the plan has more stages).
        kernel_size: the in-plane kernel size the design uses (3 for U-Nets, 5 for V-Net).
        isotropic_only: the design cannot take per-axis different strides or kernels.
        max_features: cap on features per stage (``None``: the planner's cap, 320 in 3D, 512 in 2D).
        stage_features: ``n_stages -> features`` for designs whose widths follow from their depth
            (FC-DenseNet's concatenated widths); like ``fixed_features`` it fixes the width.
        stem_stride: the first downsampling is a patch embedding of this stride on every axis it
            pools (Swin-UNet, nnFormer: 4); stage 0 then only holds the full-resolution output and
            shares stage 1's width.
        window_size: largest attention window per axis (shifted-window families); the planner
            writes the windows into the topology and only chooses patches they tile.
        global_last_stage: the deepest stage attends globally (nnFormer's bottleneck): no window.
        block_settings: the topology's block counts (of ``BLOCK_SETTINGS``) the builder reads; a plan that
            sets another one is refused, since the network would not change (``check_block_settings``).
        instance_norm: the design normalises each sample's channels over the voxels of every stage
            (InstanceNorm), which one voxel cannot feed: a patch equal to the total stride is refused
            (``check_deepest_stage``). GroupNorm over several channels and LayerNorm cope.
        norm_option: the builder's boolean option that switches that norm off (V-Net's ``norm``).
        min_slices: the fewest voxels a training patch may have along any axis: the planner never shrinks
            an axis below it, so a patch the builder would refuse is never planned (ConResNet: 2, since its
            inter-slice residual along ``slice_axis``, any axis, is zero on one slice).
    """

    spatial_dims: tuple[int, ...] = (2, 3)
    max_stages: int | None = None
    fixed_features: tuple[int, ...] | None = None
    default_blocks_per_stage: tuple[int, ...] | None = None
    kernel_size: int = 3
    isotropic_only: bool = False
    max_features: int | None = None
    stage_features: Callable[[int], tuple[int, ...]] | None = None
    stem_stride: int | None = None
    window_size: int | None = None
    global_last_stage: bool = False
    block_settings: tuple[str, ...] = BLOCK_SETTINGS
    instance_norm: bool = False
    norm_option: str | None = None
    min_slices: int = 1

    @property
    def fixed_width(self) -> bool:
        """The design prescribes its widths, so the planner cannot narrow it for a compute budget."""
        return self.fixed_features is not None or self.stage_features is not None


@dataclass(frozen=True)
class Adversary:
    """A family trained against a discriminator (Vox2Vox): what the adversarial training step needs.

    Args:
        discriminator: ``(image channels, segmentation channels) -> module`` scoring
            ``(image, segmentation)`` pairs.
        discriminator_loss: ``(scores of real pairs, scores of generated pairs) -> loss``.
        generator_loss: ``(scores of generated pairs, generator logits, (B, C, *) one-hot target,
            annotated mask or None) -> loss``; it replaces the segmentation loss. Ignored voxels of the
            real pairs carry the generator's own (detached) probabilities, so only annotated voxels tell
            real from generated.
    """

    discriminator: Callable[[int, int], nn.Module]
    discriminator_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network family.

    ``training_defaults`` is merged over the training config's defaults when this family trains;
    ``short_schedule_training`` is what the planner writes into a 3D plan whose compute budget affords
    a short schedule (``planning/short_schedule.py``), measured for this family;
    ``auxiliary_loss`` is added to the segmentation loss (it receives ``forward_with_aux``'s
    auxiliary outputs); ``adversary`` switches training to the adversarial step.
    """

    name: str
    builder: Builder
    constraints: TopologyConstraints
    paper: str
    description: str
    training_defaults: Mapping[str, Any] = field(default_factory=dict)
    short_schedule_training: Mapping[str, Any] = field(default_factory=dict)
    auxiliary_loss: AuxiliaryLoss | None = None
    adversary: Adversary | None = None
    default: bool = False

    @property
    def adversarial(self) -> bool:
        return self.adversary is not None

    def check_label_kind(self, regions: bool) -> None:
        """An adversarial family's discriminator scores softmax outputs against one-hot labels: refuse a
        region-based dataset (overlapping sigmoid outputs) at plan time, not only when training starts."""
        if regions and self.adversarial:
            raise NetworkError(
                f"{self.name} trains adversarially on softmax outputs; region-based datasets need another network "
                "(e.g. --network unet)"
            )

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword options (``deep_supervision`` and the family's own), by name."""
        return _builder_options(self.builder)


_REGISTRY: dict[str, NetworkSpec] = {}
_discovered = False


def _builder_options(builder: Builder) -> dict[str, inspect.Parameter]:
    parameters = list(inspect.signature(builder).parameters.values())
    return {p.name: p for p in parameters[len(_POSITIONAL):] if p.kind is not p.VAR_POSITIONAL}


def _check_builder(name: str, builder: Builder) -> None:
    """The builder contract (docs/adding-a-network.md), checked once when the family registers."""
    parameters = list(inspect.signature(builder).parameters.values())
    leading = tuple(p.name for p in parameters[: len(_POSITIONAL)])
    if leading != _POSITIONAL:
        raise ValueError(f"network {name!r}: the builder must start with {_POSITIONAL}, not {leading}")
    options = _builder_options(builder)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in options.values())
    if _ALWAYS_PASSED not in options and not takes_any:
        raise ValueError(f"network {name!r}: the builder must accept the keyword {_ALWAYS_PASSED!r}")


def _check_training(name: str, training_defaults: Mapping[str, Any], adversary: Adversary | None) -> None:
    section = training_defaults.get("adversarial", {})
    missing = [key for key in ADVERSARIAL_CONFIG_KEYS if key not in section]
    if adversary is not None and missing:
        raise ValueError(f"network {name!r}: an adversary needs training_defaults['adversarial'] with {missing}")


_POSITIVE_COUNTS = ("max_stages", "kernel_size", "max_features", "stem_stride", "window_size", "min_slices")
_POSITIVE_SEQUENCES = ("fixed_features", "default_blocks_per_stage")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_constraint_values(name: str, constraints: TopologyConstraints) -> None:
    """Counts, sizes and strides that a plan divides by or shrinks to must be positive whole numbers: a
    ``min_slices`` of 0 let the planner shrink an axis to no voxel, which only the builder refused, at training."""
    for field_name in _POSITIVE_COUNTS:
        value = getattr(constraints, field_name)
        if value is not None and not _is_positive_int(value):
            raise ValueError(f"network {name!r}: TopologyConstraints.{field_name} must be a whole number >= 1, not {value!r}")
    for field_name in _POSITIVE_SEQUENCES:
        values = getattr(constraints, field_name)
        if values is not None and (not values or not all(_is_positive_int(v) for v in values)):
            raise ValueError(f"network {name!r}: TopologyConstraints.{field_name} must be whole numbers >= 1, "
                             f"at least one, not {values!r}")
    if not constraints.spatial_dims or not set(constraints.spatial_dims) <= {2, 3}:
        raise ValueError(f"network {name!r}: TopologyConstraints.spatial_dims must hold 2, 3 or both, "
                         f"not {constraints.spatial_dims!r}")


def _check_constraints(name: str, constraints: TopologyConstraints) -> None:
    """A family prescribing blocks per stage (which the planner writes into the plan) must read them, and
    every numeric constraint must make sense (``_check_constraint_values``)."""
    _check_constraint_values(name, constraints)
    unknown = sorted(set(constraints.block_settings) - set(BLOCK_SETTINGS))
    if unknown:
        raise ValueError(f"network {name!r}: block_settings {unknown} are none of {BLOCK_SETTINGS}")
    if constraints.default_blocks_per_stage is not None and "blocks_per_stage" not in constraints.block_settings:
        raise ValueError(f"network {name!r}: default_blocks_per_stage is set but block_settings lacks 'blocks_per_stage'")


def register_network(
    name: str,
    *,
    paper: str,
    description: str,
    constraints: TopologyConstraints | None = None,
    training_defaults: Mapping[str, Any] | None = None,
    short_schedule_training: Mapping[str, Any] | None = None,
    auxiliary_loss: AuxiliaryLoss | None = None,
    adversary: Adversary | None = None,
    default: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(topology, in_channels, n_classes, *, deep_supervision, **options)``.

    Args:
        name: the family's name (``--network``).
        paper: the reference (authors, venue, link).
        description: one line for ``autoseg networks``.
        constraints: what the planner must respect (default: any 2D/3D topology, kernel 3).
        training_defaults: training-config values this family trains with by default (merged over
            ``training/default_config.yaml``; ``--set`` still overrides them).
        short_schedule_training: training-config values for 3D plans with a short budgeted schedule
            (the planner writes them into the plan; ``--set`` still overrides them). Set only where
            measured at equal time (docs/benchmarks.md).
        auxiliary_loss: ``(network, aux, image, target, annotated) -> loss`` added to the segmentation loss
            (``annotated``: 1 on annotated voxels, 0 on the ignore label; None without one).
        adversary: train adversarially against this discriminator (needs
            ``training_defaults['adversarial']`` with ``ADVERSARIAL_CONFIG_KEYS``).
        default: the family ``autoseg plan`` uses without ``--network`` (exactly one).
    """

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is registered twice")
        if default and any(spec.default for spec in _REGISTRY.values()):
            raise ValueError(f"network {name!r}: another family is already the default")
        _check_builder(name, builder)
        _check_training(name, training_defaults or {}, adversary)
        _check_constraints(name, constraints or TopologyConstraints())
        _REGISTRY[name] = NetworkSpec(
            name=name,
            builder=builder,
            constraints=constraints or TopologyConstraints(),
            paper=paper,
            description=description,
            training_defaults=MappingProxyType(dict(training_defaults or {})),
            short_schedule_training=MappingProxyType(dict(short_schedule_training or {})),
            auxiliary_loss=auxiliary_loss,
            adversary=adversary,
            default=default,
        )
        return builder

    return decorate


def _discover() -> None:
    """Import every module of ``autoseg.networks``: each family module registers itself on import."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")


def list_networks() -> list[str]:
    """Names of all registered networks, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_network_spec(name: str) -> NetworkSpec:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NetworkError(
            f"unknown network {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} (`autoseg networks` describes them)"
        ) from None


def default_network() -> str:
    """The family registered with ``default=True`` (nnU-Net's U-Net)."""
    _discover()
    return next(spec.name for spec in _REGISTRY.values() if spec.default)


def _checked_value(network: str, option: str, value: Any, expected: Any) -> Any:
    """``value`` if it fits a scalar annotation (ints pass for floats; an int for a ``str`` option
    becomes its digits, as YAML reads ``variant=67`` as a number), else ``NetworkError``."""
    if expected not in _SCALAR_TYPES:
        return value
    if expected is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    accepted = (int, float) if expected is float else (expected,)
    if isinstance(value, bool) is not (expected is bool) or not isinstance(value, accepted):
        raise NetworkError(
            f"network {network!r}: option {option} must be {expected.__name__}, got {value!r}; "
            f"fix it in --set network_options.{option}=... or the plan's network.options"
        )
    return value


def _checked_range(network: str, option: str, value: Any) -> Any:
    """``value`` unless a probability option (``dropout``) lies outside [0, 1]: torch's dropout layers
    raise a bare ValueError there, which would surface as an internal error instead of the user's typo."""
    if option in _PROBABILITY_OPTIONS and isinstance(value, (int, float)) and not 0 <= value <= 1:
        raise NetworkError(
            f"network {network!r}: option {option} is a probability and must lie in [0, 1], got {value!r}; "
            f"fix it in --set network_options.{option}=... or the plan's network.options"
        )
    return value


def checked_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options for the family's builder: ``NetworkError`` for one it does not take, a missing
    required one, or a scalar of the wrong type."""
    spec = get_network_spec(name)
    accepted = spec.options
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return dict(options)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise NetworkError(
            f"network {name!r}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(sorted(accepted))} "
            "(network_options in the training config or the plan's network.options)"
        )
    missing = sorted(n for n, p in accepted.items() if p.default is p.empty and n not in options)
    if missing:
        raise NetworkError(f"network {name!r}: option(s) {', '.join(missing)} must be given")
    hints = typing.get_type_hints(spec.builder)
    return {
        key: _checked_range(name, key, _checked_value(name, key, value, hints.get(key))) for key, value in options.items()
    }


def create_network(
    name: str,
    topology: Topology | dict[str, Any],
    in_channels: int,
    n_classes: int,
    **options: Any,
) -> nn.Module:
    """Build network ``name`` from a topology (a ``Topology`` or its dict from the plans file).

    ``n_classes`` is the number of output channels (classes including background for softmax
    training, number of regions for sigmoid training). Options are family-specific (for example
    ``deep_supervision``, ``vae``); options the builder does not take raise ``NetworkError``. Any
    other exception from the builder is a bug in the family and propagates as it is.
    """
    spec = get_network_spec(name)
    if isinstance(topology, dict):
        topology = Topology.from_dict(topology)
    if topology.spatial_dims not in spec.constraints.spatial_dims:
        raise NetworkError(
            f"network {name!r} supports {' and '.join(f'{d}D' for d in sorted(spec.constraints.spatial_dims))} inputs "
            f"only, the plan asks for {topology.spatial_dims}D; choose another network or configuration"
        )
    if in_channels < 1 or n_classes < 1:
        raise NetworkError(f"network {name!r}: in_channels and n_classes must be >= 1")
    checked = checked_options(name, options)
    check_block_settings(name, topology)
    check_deepest_stage(name, topology, checked)
    return spec.builder(topology, in_channels, n_classes, **checked)


def check_block_settings(name: str, topology: Topology) -> None:
    """Refuse a block count the family does not read: fcdensenet took ``blocks_per_stage`` (and several
    families ``decoder_blocks_per_stage``) and built the same network, so a hand edit did nothing in silence."""
    readable = get_network_spec(name).constraints.block_settings
    for setting in BLOCK_SETTINGS:
        value = getattr(topology, setting)
        if value is None or setting in readable:
            continue
        readers = [n for n in list_networks() if setting in _REGISTRY[n].constraints.block_settings]
        raise NetworkError(
            f"network {name!r} does not read the topology's {setting} {value} (its design fixes them), so it would "
            f"change nothing; remove {setting} from the plan's network.topology (or set it to null), or choose a "
            f"network that reads it: {', '.join(readers)}"
        )


def check_deepest_stage(name: str, topology: Topology, options: Mapping[str, Any]) -> None:
    """Refuse a training patch (``topology.extra['patch_size']``) equal to the total stride for a family whose
    every stage is instance-normalised: its deepest stage is one voxel, which torch's ``instance_norm`` refuses
    ("Expected more than 1 spatial element when training", on GPU) and the CPU's group norm turns into zeros."""
    constraints = get_network_spec(name).constraints
    patch = topology.extra.get("patch_size")
    if not constraints.instance_norm or patch is None or [int(p) for p in patch] != topology.total_stride:
        return
    if constraints.norm_option is not None and options.get(constraints.norm_option) is False:
        return
    larger = list(topology.total_stride)
    larger[larger.index(max(larger))] *= 2
    raise NetworkError(
        f"network {name!r}: patch_size {list(patch)} equals the total stride of the strides {topology.strides}, so "
        f"the deepest of its {topology.n_stages} stages is one voxel, which its instance norm cannot normalise; "
        f"use a larger patch (e.g. {larger}, --set patch_size=[...] or the plan's patch_size) or fewer stages (one "
        "entry less in every per-stage list of the plan's network.topology), or re-plan"
    )


def format_network_table() -> str:
    """One line per family for ``autoseg networks``: name, dimensionalities, description, paper."""
    lines = []
    for name in list_networks():
        spec = _REGISTRY[name]
        dims = "/".join(f"{d}D" for d in spec.constraints.spatial_dims)
        marker = " (default)" if spec.default else ""
        options = ", ".join(n if p.kind is not p.VAR_KEYWORD else f"**{n}" for n, p in spec.options.items())
        lines.append(f"{name}{marker}  [{dims}]  {spec.description}\n    {spec.paper}\n    options: {options}")
    return "\n".join(lines)
