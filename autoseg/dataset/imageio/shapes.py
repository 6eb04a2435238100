"""The shape ``read_image`` gives a label map, learned from its header alone (nothing decoded), for checks that need
only the shapes of a folder's label maps (``postprocess apply``'s size unit decoded each PNG/TIFF whole for them)."""

from __future__ import annotations

from pathlib import Path

from autoseg.dataset.imageio.endings import TIFF_ENDINGS, image_ending
from autoseg.dataset.imageio.headers import header_grid
from autoseg.dataset.imageio.tiff_volume import _TIFF_EXTRA_PAGE_BITS, is_tiff_volume


def label_map_shape(path: Path) -> tuple[int, ...] | None:
    """The (z, y, x) shape ``read_image`` gives the label map ``path``, from its header alone, nothing decoded (a PNG
    or TIFF was decoded whole for its shape, and again to postprocess it); None for one that cannot be read or is no
    label map (colour, a stack without spacing), left to its case, which names why."""
    if (grid := header_grid(path)) is not None:
        return grid[0]
    try:
        return _tiff_shape(path) if image_ending(path) in TIFF_ENDINGS else _picture_shape(path)
    except Exception:  # noqa: BLE001 - any decoder error: the case's read names it
        return None


def _tiff_shape(path: Path) -> tuple[int, ...] | None:
    """A TIFF's (pages, y, x) as read: a volume (``is_tiff_volume``) of grey pages, else one grey page (1, y, x)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        pages = [page for page in tiff.pages if not int(page.subfiletype) & _TIFF_EXTRA_PAGE_BITS]  # as read
        first = pages[0]
        grey = first.samplesperpixel == 1 and first.photometric != tifffile.PHOTOMETRIC.PALETTE
        if not grey or (len(pages) > 1 and not is_tiff_volume(path)):
            return None
        return len(pages), first.imagelength, first.imagewidth


def _picture_shape(path: Path) -> tuple[int, ...] | None:
    """A 2D picture's (1, y, x), None for a colour or palette one (refused as a label map when read)."""
    from PIL import Image

    with Image.open(path) as image:
        if len(image.getbands()) > 1 or image.mode in ("P", "PA"):
            return None
        return 1, image.height, image.width
