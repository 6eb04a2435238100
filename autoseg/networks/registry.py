"""The one network registry: every architecture registers here and is built from a plan topology.

Modelled on timm's ``register_model`` / ``create_model``: listing the registry is how the planner,
the CLI and the tests enumerate every network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.topology import Topology

Builder = Callable[..., nn.Module]


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

    @property
    def fixed_width(self) -> bool:
        """The design prescribes its widths, so the planner cannot narrow it for a compute budget."""
        return self.fixed_features is not None or self.stage_features is not None


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network family."""

    name: str
    builder: Builder
    constraints: TopologyConstraints
    paper: str
    description: str
    adversarial: bool = False
    options: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, NetworkSpec] = {}


def register_network(
    name: str,
    *,
    paper: str,
    description: str,
    constraints: TopologyConstraints | None = None,
    adversarial: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(topology, in_channels, n_classes, **options)`` as ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is registered twice")
        _REGISTRY[name] = NetworkSpec(
            name=name,
            builder=builder,
            constraints=constraints or TopologyConstraints(),
            paper=paper,
            description=description,
            adversarial=adversarial,
        )
        return builder

    return decorate


def _ensure_loaded() -> None:
    # Importing the package registers every family (each module calls register_network).
    import autoseg.networks  # noqa: F401


def list_networks() -> list[str]:
    """Names of all registered networks, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_network_spec(name: str) -> NetworkSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NetworkError(
            f"unknown network {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None


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
    ``deep_supervision``, ``vae``); unknown options raise ``NetworkError``.
    """
    spec = get_network_spec(name)
    if isinstance(topology, dict):
        topology = Topology.from_dict(topology)
    if topology.spatial_dims not in spec.constraints.spatial_dims:
        raise NetworkError(
            f"network {name!r} supports {spec.constraints.spatial_dims}-D inputs only, "
            f"the plan asks for {topology.spatial_dims}-D; choose another network or configuration"
        )
    if in_channels < 1 or n_classes < 1:
        raise NetworkError(f"network {name!r}: in_channels and n_classes must be >= 1")
    try:
        return spec.builder(topology, in_channels, n_classes, **options)
    except TypeError as exc:
        raise NetworkError(f"network {name!r}: bad options {sorted(options)} ({exc})") from exc
