"""Which channels of a case's colour images a dataset (or a trained model) declares, and the refusal of a
wrong count."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.dataset.description import channel_list
from autoseg.dataset.imageio.endings import NATURAL_2D_ENDINGS, image_ending
from autoseg.dataset.imageio.natural2d import COLOUR_KINDS, _pil_mode
from autoseg.errors import DatasetError


def select_channels(
    paths: Sequence[str | Path], arrays: Sequence[np.ndarray], alphas: Sequence[bool], expected: int,
    model_channels: Mapping[str, str] | None = None,
) -> list[np.ndarray]:
    """The files' channel arrays (C_i, z, y, x) that make the ``expected`` channels, in order.

    Alpha is dropped when the channels without it are what the dataset declares (an RGBA PNG of an
    R, G, B dataset); any other count raises ``DatasetError`` naming the files, both counts and the fix
    (``model_channels``: see ``read_case_images``).
    """
    counts = [a.shape[0] for a in arrays]
    if sum(counts) == expected:
        return list(arrays)
    if any(alphas) and sum(c - int(alpha) for c, alpha in zip(counts, alphas)) == expected:
        return [a[:-1] if alpha else a for a, alpha in zip(arrays, alphas)]
    raise DatasetError(_channel_count_problem([Path(p) for p in paths], arrays, alphas, expected, model_channels))


def _channel_count_problem(
    paths: list[Path], arrays: Sequence[np.ndarray], alphas: Sequence[bool], expected: int,
    model_channels: Mapping[str, str] | None,
) -> str:
    """Files, channels found, channels expected and the fix; a dataset may also declare what was found,
    a trained model's channels are fixed."""
    found = sum(a.shape[0] for a in arrays)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+ {len(paths) - 1} more file(s) of the case)"
    kinds = ", ".join(
        "1 channel" if image_ending(p) not in NATURAL_2D_ENDINGS
        else COLOUR_KINDS[a.shape[0]] if alpha or a.shape[0] in (1, 3)
        else f"{a.shape[0]} samples, none marked alpha"  # a TIFF (_last_channel_is_alpha)
        for p, a, alpha in zip(paths, arrays, alphas)
    )
    if found > expected and expected == 1 and len(arrays) == 1:
        image = arrays[0]
        grey = " (its R, G and B are equal: a grey image stored as colour)" if all(
            np.array_equal(image[0], image[c]) for c in range(1, min(3, image.shape[0]))
        ) else ""
        if _pil_mode(paths[0]) in ("P", "PA"):
            # A grey image saved with a lookup table (Fiji/ImageJ's LUTs) is a palette file, read as its colours.
            grey = (" (it is a palette (indexed-colour) image, read as its colours: if its indices are the "
                    "intensities, as in an image saved with a lookup table, save them without the palette)")
        fix, declare = f"save the image as grey (one channel){grey}", f"{_declarable(found, alphas)} channels"
    elif found < expected:
        fix = f"give the case {expected} channels (one RGB file holds 3, a grey file 1; files _0000, _0001, ...)"
        declare = _declarable(found, alphas)
    else:
        fix, declare = f"save the case with {expected} channel(s)", _declarable(found, alphas)
    problem = f"{where}: found {found} channel(s) ({kinds}), {_expected_channels(expected, model_channels)}; {fix}"
    return problem if model_channels is not None else f"{problem}, or declare {declare} in channel_names"


def _declarable(found: int, alphas: Sequence[bool]) -> str:
    """The channel counts a dataset may declare for files of ``found`` channels: with alpha, also the count
    without it (alpha is then dropped); a grey + alpha PNG was told to declare 2, though 1 reads it too."""
    without_alpha = found - sum(alphas)
    return str(found) if without_alpha == found else f"{found} (or {without_alpha}, dropping alpha)"


def _expected_channels(expected: int, model_channels: Mapping[str, str] | None) -> str:
    """Who expects ``expected`` channels: the dataset's dataset.json, or the trained model (named channels)."""
    if model_channels is None:
        return f"dataset.json channel_names declares {expected}"
    return f"the model expects {expected} ({channel_list(model_channels)})"
