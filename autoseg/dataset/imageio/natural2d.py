"""2D natural images (PNG, BMP, 2D TIFF): their pixels and colour kinds, the refusals of what they cannot
hold, and writing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.dataset.imageio.endings import TIFF_ENDINGS, image_ending
from autoseg.dataset.imageio.geometry import SLICE_SPACING_2D, Geometry
from autoseg.dataset.imageio.rawfile import _first_line
from autoseg.dataset.imageio.tiff_volume import (
    _imagej_slice_spacing,
    _pil_tiff_pages,
    _spacing_file_wanted,
    _tiff_pages,
)
from autoseg.dataset.imageio.values import _refuse_complex, is_integer_valued
from autoseg.errors import DatasetError
from autoseg.utils.atomic import atomic_path


COLOUR_KINDS = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}  # channels -> kind; alpha is last


def _read_natural_2d_pixels(path: Path) -> np.ndarray:
    """The file's pixels as (y, x) grey or (y, x, c) colour with c in 2..4 (alpha last)."""
    from skimage import io as skio

    _refuse_multi_page_tiff(path)
    _refuse_16_bit_colour_png(path)
    try:
        if _pil_mode(path) in ("LA", "La"):
            # scikit-image (and so nnU-Net) scrambles grey + alpha PNGs into a wrong shape; PIL reads them right.
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
        elif path.suffix.lower() in TIFF_ENDINGS:
            array = _read_tiff_page(path)
        else:
            array = np.asarray(skio.imread(str(path)))
    except Exception as exc:  # noqa: BLE001 - any decoder error means an unreadable file
        raise DatasetError(f"{path}: cannot be read as an image: {_first_line(exc)}") from None
    _refuse_complex(path, array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in COLOUR_KINDS):
        raise DatasetError(f"{path}: has shape {array.shape}; expected a grey, RGB or RGBA 2D image")
    return array


_PNG_COLOUR_TYPES = {2: "RGB", 4: "grey + alpha", 6: "RGBA"}  # IHDR colour types with several samples


def _refuse_16_bit_colour_png(path: Path) -> None:
    """Refuse a PNG of 16-bit colour samples (RGB, RGBA, grey + alpha): Pillow, the decoder (nnU-Net's too), keeps
    only their high 8 bits, so 3000 and 3001 both read as 11, and grey + alpha comes back as RGBA (4 channels).
    A 16-bit grey PNG is read at full depth."""
    if path.suffix.lower() != ".png":
        return
    with open(path, "rb") as f:
        header = f.read(26)  # signature (8), IHDR length and type (8), width, height, bit depth, colour type
    if len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16 and header[25] in _PNG_COLOUR_TYPES:
        raise DatasetError(
            f"{path}: is a 16-bit {_PNG_COLOUR_TYPES[header[25]]} PNG, whose samples the PNG decoder cuts to 8 bits; "
            "save it as a 16-bit TIFF (.tif keeps them), or each channel as a 16-bit grey PNG (_0000, _0001, ...)"
        )


def _read_tiff_page(path: Path) -> np.ndarray:
    """A one-page TIFF as (y, x) or (y, x, samples), by its planar configuration: scikit-image guesses the
    samples' axis from the shape and took a small image's rows for the samples (4x5 pixels of 2 samples
    came back as 5x2 of 4)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        try:
            array = np.asarray(page.asarray())
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
            return _pil_tiff_pages(path)[0]
        if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            array = np.moveaxis(array, 0, -1)
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
            array = _palette_colours(array, np.asarray(page.colormap))
    return array


def _palette_colours(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """A palette (indexed-colour) TIFF's pixels as RGB (y, x, 3) uint8, as a palette PNG or BMP is read.

    The decoder hands over the palette indices, so a palette TIFF was read as one grey channel (and as a
    label map) where the same picture as a PNG gave its three colours (and was refused as a label map). A
    TIFF colormap (3, entries) holds 16-bit values, scaled to 8 bits as PIL does; one that a writer filled
    with 8-bit values is kept as it is."""
    if colormap.max(initial=0) > 255:
        colormap = colormap // 256
    return np.moveaxis(colormap[:, indices], 0, -1).astype(np.uint8)


def _refuse_multi_page_tiff(path: Path) -> None:
    """A TIFF of several pages is a stack (slices or channels, the file does not say which). The decoder
    would hand 2 to 4 pages over as the colours of one image (so 4 grey pages would pass as RGBA, the
    fourth dropped as alpha), more as a volume without spacing: a stack without known spacing is refused,
    naming the pages and the spacing file that makes it a volume."""
    if path.suffix.lower() not in TIFF_ENDINGS:
        return
    pages = _tiff_pages(path)
    if pages > 1:
        imagej = _imagej_slice_spacing(path)
        unread = f" (ImageJ's slice spacing in its description, {imagej}, is not read)" if imagej else ""
        raise DatasetError(
            f"{path}: is a multi-page TIFF ({pages} pages) without its spacing{unread}; a 3D TIFF needs "
            f"{_spacing_file_wanted(path)} (nnU-Net's Tiff3DIO "
            "convention). Or save the volume as .nii.gz (or .nrrd/.mha), or each page as its own channel file "
            "(<case>_0000.tif, <case>_0001.tif, ...)"
        )


def _natural_2d_geometry() -> Geometry:
    return Geometry(spacing=(SLICE_SPACING_2D, 1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))


def _read_natural_2d(path: Path) -> tuple[np.ndarray, Geometry]:
    """A one-value-per-pixel 2D image (label map, prediction, grey image) as (1, y, x)."""
    array = _read_natural_2d_pixels(path)
    if array.ndim == 3:
        raise DatasetError(f"{path}: {_colour_label_problem(path, array)}")
    return array[None], _natural_2d_geometry()


def _colour_label_problem(path: Path, array: np.ndarray) -> str:
    """Why a colour file cannot be a label map, and the fix (palette PNGs are read as colours too)."""
    kind = COLOUR_KINDS[array.shape[-1]]
    if _pil_mode(path) in ("P", "PA"):
        return (
            f"is a palette (indexed-colour) {image_ending(path).lstrip('.').upper()}, read as {kind} colours; label "
            f"maps need one class number per pixel: save the palette indices as a grey {image_ending(path)} (0 "
            "background, 1, 2, ...)"
        )
    colours = min(3, array.shape[-1])
    grey = " (its colour channels are equal: converting it to grey keeps the values)" if all(
        np.array_equal(array[..., 0], array[..., c]) for c in range(1, colours)
    ) else ""
    return (
        f"is a colour image ({kind}, {array.shape[-1]} channels) where one value per pixel is expected; save "
        f"label maps as grey PNGs whose pixel values are the class numbers (0 background, 1, 2, ...){grey}"
    )


def _pil_mode(path: Path) -> str | None:
    """PIL's pixel mode of the file ('RGB', 'P' for palette, 'LA' for grey + alpha), None if PIL cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.mode)
    except Exception:  # noqa: BLE001 - the reader itself reports unreadable files
        return None


def _write_natural_2d(array: np.ndarray, path: Path) -> None:
    from skimage import io as skio

    if array.shape[0] != 1:
        raise ValueError(f"{path}: natural 2D images hold one slice, array has {array.shape[0]}")
    image = array[0]
    if image.dtype not in (np.uint8, np.uint16):
        # PNG holds 8- or 16-bit unsigned grey values: label maps of any integer dtype fit when in range.
        if not is_integer_valued(image) or image.min(initial=0) < 0 or image.max(initial=0) > 65535:
            raise ValueError(f"{path}: PNG/TIF outputs need integer values in 0..65535")
        image = image.astype(np.uint16 if image.max(initial=0) > 255 else np.uint8)
    if image_ending(path) == ".bmp":
        image = _bmp_pixels(image, path)
    with atomic_path(path) as tmp:
        if image_ending(path) in TIFF_ENDINGS:
            # One grey page, said so: left to guess, tifffile took an image 3 or 4 pixels wide for RGB(A) samples
            # (ValueError 'not enough samples for PHOTOMETRIC.RGB', or a label map read back as a colour image).
            import tifffile

            tifffile.imwrite(tmp, image, photometric="minisblack")
        else:
            skio.imsave(str(tmp), image, check_contrast=False)


def _bmp_pixels(image: np.ndarray, path: Path) -> np.ndarray:
    """``image`` as the 8-bit grey a BMP holds: a label map of 16-bit values (labels above 255, or uint16 ones of
    any value) failed in Pillow with 'cannot write mode I;16 as BMP', an internal error after the prediction."""
    if image.max(initial=0) > 255:
        raise DatasetError(f"{path}: label value {image.max()} cannot be written as .bmp, which holds 8-bit values "
                           "(0..255); use .png or .tif, which hold 16-bit ones")
    return image.astype(np.uint8)
