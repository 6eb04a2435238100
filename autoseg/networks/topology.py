"""The per-axis network topology: what the planner decides and every network is built from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from autoseg.errors import NetworkError


# The way out of a malformed plan, which callers that give their own advice take off.
REPLAN = "re-run `autoseg plan`"


@dataclass
class Topology:
    """Per-stage description of an encoder-decoder network.

    All per-axis lists are in array axis order (the plan's transposed order). Stage 0 works at full
    resolution, so ``strides[0]`` is all ones; ``strides[i]`` is the downsampling into stage ``i``.

    Args:
        spatial_dims: 2 or 3.
        features_per_stage: output channels of each encoder stage.
        kernel_sizes: conv kernel size per stage and axis.
        strides: downsampling stride per stage and axis.
        blocks_per_stage: encoder blocks (convs or residual blocks) per stage; ``None`` means the
            network family's own default.
        decoder_blocks_per_stage: decoder blocks per decoder stage (deepest first); ``None`` means
            the family's default.
        window_sizes: attention window per stage and axis for windowed-attention families (ones at
            stages without windows); every stage's feature map must be a multiple of its window.
    """

    spatial_dims: int
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    blocks_per_stage: list[int] | None = None
    decoder_blocks_per_stage: list[int] | None = None
    window_sizes: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def total_stride(self) -> list[int]:
        """Per-axis product of all strides: every input size must be divisible by it."""
        total = [1] * self.spatial_dims
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return total

    @property
    def size_multiple(self) -> list[int]:
        """Per-axis size every input must be a multiple of: the total stride, and for windowed
        attention each stage's cumulative stride times its window."""
        multiple = self.total_stride
        if self.window_sizes is None:
            return multiple
        cumulative = [1] * self.spatial_dims
        for stride, window in zip(self.strides, self.window_sizes):
            cumulative = [c * s for c, s in zip(cumulative, stride)]
            multiple = [math.lcm(m, c * w) for m, c, w in zip(multiple, cumulative, window)]
        return multiple

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise NetworkError(f"topology: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        n = len(self.features_per_stage)
        if n < 1:
            raise NetworkError("topology: features_per_stage is empty; plan at least one stage")
        if any(int(f) < 1 for f in self.features_per_stage):
            # A width of 0 or below reached torch's conv constructors as an internal error.
            raise NetworkError(f"topology: features_per_stage {self.features_per_stage} must hold positive integers")
        for name in ("kernel_sizes", "strides", "window_sizes"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != n:
                raise NetworkError(
                    f"topology: {name} has {len(values)} stages but features_per_stage has {n}"
                )
            for v in values:
                if len(v) != self.spatial_dims or any(int(x) < 1 for x in v):
                    raise NetworkError(
                        f"topology: {name} entry {v} must hold {self.spatial_dims} positive integers"
                    )
        self._check_odd_kernels()
        if any(s != 1 for s in self.strides[0]):
            raise NetworkError(f"topology: strides[0] must be all ones, got {self.strides[0]}")
        self._check_block_counts(n)

    def _check_block_counts(self, n: int) -> None:
        """Block counts: one per encoder stage, one per decoder stage, each >= 1. A family that did not read a
        count took a 0 or -1 in silence (the registry now refuses a count its family ignores)."""
        for name, expected in (("blocks_per_stage", n), ("decoder_blocks_per_stage", n - 1)):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != expected:
                raise NetworkError(f"topology: {name} has {len(values)} entries, expected {expected}")
            if any(int(v) < 1 for v in values):
                raise NetworkError(
                    f"topology: every entry of {name} must be >= 1, got {list(values)}; fix the plan's "
                    f"network.topology.{name} (or set it to null for the family's default)"
                )

    def _check_odd_kernels(self) -> None:
        """Every family pads its convs by ``k // 2`` to keep sizes ("same" padding), which only an odd
        kernel does: an even one (a hand-edited plan) shrinks each map by one voxel per conv, and the
        skips then failed to line up deep inside the forward pass as an internal error."""
        for kernel in self.kernel_sizes:
            if any(int(k) % 2 == 0 for k in kernel):
                raise NetworkError(
                    f"topology: kernel_sizes entry {kernel} must hold odd sizes (convs keep the size with padding "
                    "k // 2); use 1, 3 or 5 per axis in the plan's topology"
                )

    def check_input_shape(self, shape: tuple[int, ...] | list[int]) -> None:
        """Raise a clear error when a spatial input shape is not a multiple of ``size_multiple``."""
        total = self.size_multiple
        if len(shape) != self.spatial_dims or any(s % t for s, t in zip(shape, total)):
            raise NetworkError(
                f"input shape {tuple(shape)} is not divisible by the network's total stride"
                f"{' x attention window' if self.window_sizes else ''} {tuple(total)}; pad the input or plan a "
                "patch size that is a multiple of it"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Topology":
        try:
            return cls(
                spatial_dims=_whole(data["spatial_dims"]),
                features_per_stage=[_whole(f) for f in data["features_per_stage"]],
                kernel_sizes=[[_whole(k) for k in ks] for ks in data["kernel_sizes"]],
                strides=[[_whole(s) for s in st] for st in data["strides"]],
                blocks_per_stage=_optional_ints(data.get("blocks_per_stage")),
                decoder_blocks_per_stage=_optional_ints(data.get("decoder_blocks_per_stage")),
                window_sizes=None if data.get("window_sizes") is None else [[_whole(w) for w in ws] for ws in data["window_sizes"]],
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise NetworkError(f"topology in the plan is malformed ({exc!r}); {REPLAN}") from exc


def _whole(value: Any) -> int:
    """A plan's size or count as an int. A fractional number (a hand edit such as ``32.5``) raises, inside
    ``from_dict``'s malformed-plan error, instead of ``int`` truncating it to a network the plan does not
    describe; ``32.0`` is 32."""
    number = int(value)
    if isinstance(value, float) and value != number:
        raise ValueError(f"{value!r} is not a whole number")
    return number


def _optional_ints(values: Any) -> list[int] | None:
    """A plan's optional per-stage counts as ints (``None`` stays ``None``): a non-number there raises
    here, inside ``from_dict``'s malformed-plan error, not later in a family's builder as an internal error."""
    return None if values is None else [_whole(v) for v in values]
