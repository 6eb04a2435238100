"""Multi-page TIFFs as 3D volumes (nnU-Net v2's ``Tiff3DIO``): their pages, their spacing (a sidecar
``<case>.json`` or the TIFF's own description, in mm), reading and writing them."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg.dataset.imageio.endings import TIFF_ENDINGS
from autoseg.dataset.imageio.geometry import _MM_PER_UNIT, Geometry
from autoseg.dataset.imageio.rawfile import _first_line
from autoseg.dataset.imageio.values import _refuse_complex
from autoseg.errors import DatasetError
from autoseg.utils.atomic import atomic_path


def _pil_tiff_pages(path: Path) -> list[np.ndarray]:
    """A TIFF's pages decoded by PIL (libtiff), for compressions tifffile decodes only with the optional
    imagecodecs package (LZW, JPEG: common in microscopy and scanner output), which were refused as
    'cannot be read'. A palette page is read as its RGB colours, as everywhere (``_palette_colours``)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return [np.asarray(page.convert("RGB") if page.mode in ("P", "PA") else page)
                for page in ImageSequence.Iterator(image)
                if not int(page.tag_v2.get(254, 0)) & _TIFF_EXTRA_PAGE_BITS]  # 254: NewSubfileType


def _imagej_slice_spacing(path: Path) -> str | None:
    """The slice spacing a Fiji/ImageJ stack's description gives ('1.5 micron'), None without: a stack saved by
    Fiji was refused as 'without its spacing', though Fiji had written one (autoseg reads a spacing file)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            metadata = tiff.imagej_metadata or {}
    except Exception:  # noqa: BLE001 - the reader itself reports unreadable files
        return None
    spacing = metadata.get("spacing")
    return None if spacing is None else f"{spacing} {metadata.get('unit', '')}".strip()


def tiff_spacing_files(path: Path) -> list[Path]:
    """Where a 3D TIFF's spacing may lie, in the order looked at: ``<name>.json`` (a label map
    ``<case>.tif``), then ``<case>.json`` for a channel file ``<case>_0000.tif`` (nnU-Net's Tiff3DIO)."""
    stem = path.name[: -len(path.suffix)]
    files = [path.with_name(f"{stem}.json")]
    if re.fullmatch(r".+_\d{4}", stem):
        files.append(path.with_name(f"{stem[:-5]}.json"))
    return files


def _spacing_file_wanted(path: Path) -> str:
    """The spacing file a TIFF read without spacing wants, for its fix: one that exists holds no "spacing" (it
    was named as if it were missing, to be added)."""
    sidecar = tiff_spacing_files(path)[-1]
    wanted = f'{sidecar} holding {{"spacing": [z, y, x]}} in mm'
    return wanted + (' (it exists, with no "spacing" in it)' if sidecar.is_file() else "")


def missing_spacing_file_problem(path: Path, geometry: Geometry, other: Path, other_geometry: Geometry) -> str | None:
    """The problem of two files of one case where one is a one-page TIFF read as 2D for want of its spacing
    file while the other is a 3D TIFF volume, else None. Without this a label whose ``<case>.json`` was
    forgotten was reported as a '2D vs 3D' geometry mismatch, naming neither the missing file nor the fix."""
    for flat, flat_geometry, volume, volume_geometry in ((path, geometry, other, other_geometry),
                                                         (other, other_geometry, path, geometry)):
        if flat_geometry.is_2d and not volume_geometry.is_2d and flat.suffix.lower() in TIFF_ENDINGS \
                and is_tiff_volume(volume):
            return (f"{flat}: a one-page TIFF without its spacing file, so read as a 2D image, while {volume.name} is a "
                    f"3D volume; add {_spacing_file_wanted(flat)} (the spacing of {volume.name}: "
                    f"{list(volume_geometry.spacing)})")
    return None


def is_tiff_volume(path: Path) -> bool:
    """A TIFF read as 3D: autoseg's own output (its description holds the spacing; a one-slice volume
    too), or several pages with a spacing sidecar."""
    return _volume_spacing_source(path) is not None


def _volume_spacing_source(path: Path) -> tuple[str, Any] | None:
    """(where, spacing as written) of a TIFF read as 3D, None for any other file: autoseg's own spacing in
    the description, else the sidecar's (nnU-Net's convention), looked at once per read. A sidecar makes a
    one-page TIFF a one-slice volume too: a stack of one slice in a 3D TIFF dataset was read as a 2D image
    (spacing 999 x 1 x 1 instead of its sidecar's) and preprocessing resampled its slice to hundreds."""
    if path.suffix.lower() not in TIFF_ENDINGS or not path.is_file():
        return None
    written = _written_spacing(path)
    if written is not None:
        return f"{path} (its description)", written
    sidecar = _sidecar_spacing(path)
    return (str(sidecar[0]), sidecar[1]) if sidecar is not None else None


def _written_spacing(path: Path) -> Any:
    """The spacing autoseg wrote into a TIFF's description (tifffile's shaped metadata): three numbers beside a
    3D shape, else None. Other tools write a "spacing" there too (tifffile's ``metadata={"spacing": 0.5, "unit":
    "um"}`` of a 2D grey or RGB image, whose shape (y, x, 3) is 3 long): it does not make the image a volume
    (was refused as 'spacing of x.tif must be [z, y, x]')."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            metadata = tiff.shaped_metadata
    except Exception:  # noqa: BLE001 - the reader itself reports unreadable files
        return None
    if not metadata or not isinstance(metadata[0].get("shape"), list) or len(metadata[0]["shape"]) != 3:
        return None
    spacing = metadata[0].get("spacing")
    if not isinstance(spacing, list) or len(spacing) != 3:
        return None  # a pixel size (an RGB image's shape is 3 long too: it was refused as a volume of bad spacing)
    return _spacing_in_mm(path, spacing, metadata[0].get("unit", "mm"))


def _spacing_in_mm(path: Path, spacing: list[Any], unit: Any) -> list[Any]:
    """A TIFF description's ``spacing`` in mm: a microscope's volume written with ``"unit": "um"`` was read as
    millimetres, 1000 times too coarse, in silence. A spacing of other than numbers is left to
    ``_checked_spacing``; a unit of no known length is refused."""
    factor = _MM_PER_UNIT.get(unit.lower()) if isinstance(unit, str) else None
    if factor is None:
        raise DatasetError(f"{path}: its description gives the spacing in {unit!r}, no length unit autoseg knows "
                           f"({', '.join(_MM_PER_UNIT)}); write the spacing in mm")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spacing)
    return [v * factor for v in spacing] if numbers and factor != 1.0 else spacing


def _sidecar_spacing(path: Path) -> tuple[Path, Any] | None:
    """(sidecar, its "spacing") of the first sidecar that has one: a ``<case>.json`` without it is another
    file (the probabilities' sidecar beside a prediction)."""
    from autoseg.utils.jsonio import read_json

    for sidecar in tiff_spacing_files(path):
        if sidecar.is_file():
            content = read_json(sidecar, DatasetError, "not found", 'write {"spacing": [z, y, x]} in mm')
            if isinstance(content, dict) and "spacing" in content:
                return sidecar, content["spacing"]
    return None


def _checked_spacing(path: Path, where: str, spacing: Any) -> tuple[float, float, float]:
    """A 3D TIFF's spacing as three positive finite numbers, else the error naming where it was read."""
    valid = isinstance(spacing, list) and len(spacing) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in spacing)
    if not valid:
        # a 2D image's pixel size [y, x] beside a one-page TIFF was told only that three numbers were needed
        plane = (" (a 2D image's pixel size? give its slice thickness too, [z, y, x], or remove the .json to read it "
                 "as a 2D image of 1 per pixel)" if isinstance(spacing, list) and len(spacing) == 2
                 and _tiff_pages(path) == 1 else "")
        raise DatasetError(f'{where}: spacing of {path.name} must be {{"spacing": [z, y, x]}}: three positive '
                           f"numbers in mm (got {spacing!r}){plane}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _read_tiff_volume(path: Path, where: str, written: Any) -> tuple[np.ndarray, Geometry]:
    """A grey TIFF of one or more pages as (pages, y, x) with its spacing (``written`` at ``where``, from
    ``_volume_spacing_source``); origin 0, identity direction (TIFF has none)."""
    import tifffile

    spacing = _checked_spacing(path, where, written)
    pages: list[Any] = []
    planar_colour = False  # one page of colour planes (samples first: tifffile's 'SYX')
    try:
        try:
            with tifffile.TiffFile(path) as tiff:
                # tifffile.imread gives the first series only: for pages written one by one (a TiffWriter loop, one
                # series per page) the first page, so such a volume was refused as 'a 3D TIFF must hold grey pages
                # ...; it has shape (y, x)'. Then every full-resolution page is a slice. A first series that holds
                # them all keeps its own shape (an ImageJ hyperstack's (z, c, y, x) is refused below, not mixed).
                pages = [page for page in tiff.pages if not int(page.subfiletype) & _TIFF_EXTRA_PAGE_BITS]
                series = tiff.series[0]
                array = series.asarray() if len(series.pages) >= len(pages) else _stacked_pages(path, [p.asarray() for p in pages])
                planar_colour = len(pages) == 1 and series.axes.startswith("S")
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            array = _stacked_pages(path, _pil_tiff_pages(path))
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means an unreadable file
        raise DatasetError(f"{path}: cannot be read as a TIFF volume: {_first_line(exc)}") from None
    _refuse_complex(path, array)
    if len(pages) == 1 and array.shape[:1] != (1,):  # one page, grey (y, x) or colour (y, x, 3): one slice
        array = array[None]
    if planar_colour:  # what tifffile.imwrite makes of a volume of 3 or 4 slices by default: was 'shape (1, 3, y, x)'
        raise DatasetError(f"{path}: holds one colour page of {array.shape[1]} planes, not {array.shape[1]} slices "
                           f"(tifffile.imwrite stores a ({array.shape[1]}, y, x) array so unless told otherwise); a volume: "
                           "write it again with tifffile.imwrite(..., photometric='minisblack'); colour: save each colour "
                           "as its own channel file")
    if array.ndim != 3:
        raise DatasetError(f"{path}: a 3D TIFF must hold grey pages (pages, y, x); it has shape {array.shape}. "
                           "Save each colour as its own channel file")
    return array, Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=tuple(float(v) for v in np.eye(3).ravel()))


def _stacked_pages(path: Path, pages: Sequence[np.ndarray]) -> np.ndarray:
    """A TIFF's pages as one volume; pages of several sizes (an overview or thumbnail not marked as one) are refused
    naming them: it was 'cannot be read as a TIFF volume: all input arrays must have the same shape'."""
    sizes = list(dict.fromkeys(page.shape for page in pages))
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, size)) for size in sizes)
        raise DatasetError(f"{path}: its pages differ in size ({shown}), so they are no slices of one volume; remove the "
                           "other pages (an overview or thumbnail?), or save the volume as .nii.gz")
    return np.stack(pages)


def _write_tiff_volume(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """A 3D array as a multi-page TIFF carrying its spacing in its description (read back by
    ``_volume_spacing_source``; a sidecar JSON here would collide with saved probabilities' ``<case>.json``)."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, photometric="minisblack", metadata={"spacing": [float(v) for v in geometry.spacing]},
                         compression="zlib")


# NewSubfileType bits of pages that are no image of their own: a reduced-resolution copy (a thumbnail, as
# scanners and microscopes add after the image) and a transparency mask.
_TIFF_EXTRA_PAGE_BITS = 1 | 4


def _tiff_pages(path: Path) -> int:
    """The number of full-resolution pages (images) in a TIFF file; 1 when tifffile cannot tell (the reader then
    reports the file). A thumbnail page made a 2D image 'a multi-page TIFF (2 pages) without its spacing',
    which nnU-Net's reader (tifffile's first series) reads as the image it is."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return max(1, sum(1 for page in tiff.pages if not int(page.subfiletype) & _TIFF_EXTRA_PAGE_BITS))
    except Exception:  # noqa: BLE001 - the reader itself reports unreadable files
        return 1
