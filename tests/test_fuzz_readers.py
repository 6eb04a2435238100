"""Seeded fuzzing of the image readers: real NIfTI, NRRD and PNG files with mutated header fields and
bytes go to ``autoseg verify`` and to ``predict``'s reader. Never a traceback, never a hang: either the
file still reads, or the run exits 2 with a message naming the file.

CI tries ``AUTOSEG_FUZZ_EXAMPLES`` mutations per format and target (default 15); a long run on demand:
``AUTOSEG_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_readers.py`` (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from autoseg.cli import app
from autoseg.dataset.imageio import read_image
from autoseg.errors import AutosegError
from autoseg.inference.batch import read_finite_case

from cli_helpers import runner
from conftest import HIPPOCAMPUS, SHARED_DATA

EXAMPLES = int(os.environ.get("AUTOSEG_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("AUTOSEG_FUZZ_SEED", "17"))
HANG_SECONDS = 120  # one mutated file read (and verified) far slower than this is a hang
CASE = "hippocampus_001"
EM = SHARED_DATA / "Dataset907_EMMembrane"

# NIfTI-1 header fields (offset, struct format) a broken exporter gets wrong (nifti1.h).
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim0": (76, "<f"), "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "quatern_b": (256, "<f"), "srow_x0": (280, "<f"),
    "magic": (344, "<i"),
}
NRRD_FIELDS = ("type", "dimension", "sizes", "space directions", "encoding", "endian", "space origin", "kinds")
NRRD_VALUES = ("0", "-1", "1", "3", "4", "99999999", "nan", "inf", "1e308", "", "foo", "(nan,0,0) (0,1,0) (0,0,1)",
               "(0,0,0) (0,0,0) (0,0,0)", "gzip", "raw", "big", "double", "uchar", "100000 100000 100000", "2 2")
# PNG: IHDR width, height (>I), bit depth, colour type, interlace (B), and the first chunk's length.
PNG_FIELDS = {"width": (16, ">I"), "height": (20, ">I"), "bit_depth": (24, ">B"), "color_type": (25, ">B"),
              "interlace": (28, ">B"), "ihdr_length": (8, ">I")}

INTEGERS = st.sampled_from([0, 1, 2, 3, 7, 8, 16, 64, 255, 348, 352, 540, 32767, 65535, 2**31 - 1, 2**32 - 1])
SIGNED = st.one_of(INTEGERS, st.integers(-(2**31), 2**31 - 1))
FLOATS = st.one_of(st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]),
                   st.floats(width=32, allow_nan=True, allow_infinity=True))


def _pack(fmt: str, value: float) -> bytes:
    """``value`` packed as ``fmt``, wrapped into the field's range for integer fields."""
    if fmt[-1] in "fd":
        return struct.pack(fmt, value)
    bits = struct.calcsize(fmt) * 8
    wrapped = int(value) % 2**bits
    if fmt[-1].islower() and wrapped >= 2 ** (bits - 1):
        wrapped -= 2**bits
    return struct.pack(fmt, wrapped)


def header_field(fields: dict[str, tuple[int, str]]) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    def mutate(name: str, value: float) -> Callable[[bytes], bytes]:
        offset, fmt = fields[name]

        def apply(data: bytes) -> bytes:
            packed = _pack(fmt, value)
            return data[:offset] + packed + data[offset + len(packed):]
        apply.__name__ = f"{name}={value!r}"
        return apply
    def values(name: str) -> st.SearchStrategy[float]:
        return FLOATS if fields[name][1][-1] in "fd" else SIGNED

    return st.sampled_from(sorted(fields)).flatmap(lambda name: st.builds(mutate, st.just(name), values(name)))


def byte_flips(header_bytes: int) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """1-8 bytes set to random values, most of them in the header."""
    position = st.one_of(st.integers(0, header_bytes - 1), st.floats(0, 1))

    def mutate(changes: list[tuple[int | float, int]]) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            out = bytearray(data)
            for where, value in changes:
                index = where if isinstance(where, int) else int(where * (len(out) - 1))
                out[min(index, len(out) - 1)] = value
            return bytes(out)
        apply.__name__ = f"bytes {changes}"
        return apply
    return st.builds(mutate, st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=8))


def truncation() -> st.SearchStrategy[Callable[[bytes], bytes]]:
    def mutate(fraction: float) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            return data[: int(len(data) * fraction)]
        apply.__name__ = f"cut at {fraction:.3f}"
        return apply
    return st.builds(mutate, st.floats(0, 0.999))


def nrrd_field() -> st.SearchStrategy[Callable[[bytes], bytes]]:
    def mutate(name: str, value: str) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            end = data.index(b"\n\n")
            header = re.sub(rf"(?m)^{re.escape(name)}:.*$", f"{name}: {value}", data[:end].decode("latin-1"))
            return header.encode("latin-1") + data[end:]
        apply.__name__ = f"{name}: {value}"
        return apply
    return st.builds(mutate, st.sampled_from(NRRD_FIELDS), st.sampled_from(NRRD_VALUES))


def gz_wrapped(mutations: st.SearchStrategy[Callable[[bytes], bytes]]) -> st.SearchStrategy[Callable[[bytes], bytes]]:
    """Mutate the uncompressed NIfTI, then compress it again (the header of a .nii.gz, not its gzip)."""
    import gzip

    def wrap(inner: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def apply(data: bytes) -> bytes:
            return gzip.compress(inner(gzip.decompress(data)), mtime=0)
        apply.__name__ = f"inside gzip: {inner.__name__}"
        return apply
    return mutations.map(wrap)


NIFTI_MUTATIONS = st.one_of(header_field(NIFTI_FIELDS), byte_flips(352), truncation())
FORMATS: dict[str, tuple[str, st.SearchStrategy[Callable[[bytes], bytes]]]] = {
    "nii": (".nii", NIFTI_MUTATIONS),
    "nii.gz": (".nii.gz", st.one_of(gz_wrapped(NIFTI_MUTATIONS), byte_flips(64), truncation())),
    "nrrd": (".nrrd", st.one_of(nrrd_field(), byte_flips(300), truncation())),
    "png": (".png", st.one_of(header_field(PNG_FIELDS), byte_flips(64), truncation())),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict]]:
    """Per format: a real image, its real label, and a dataset.json (the NRRD and .nii are the real
    Hippocampus case re-saved, as other tools write them)."""
    base = tmp_path_factory.mktemp("fuzz_originals")
    image = sitk.ReadImage(str(HIPPOCAMPUS / "imagesTr" / f"{CASE}_0000.nii.gz"))
    label = sitk.ReadImage(str(HIPPOCAMPUS / "labelsTr" / f"{CASE}.nii.gz"))
    description = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    result = {}
    for name, ending in (("nii", ".nii"), ("nii.gz", ".nii.gz"), ("nrrd", ".nrrd")):
        sitk.WriteImage(image, str(base / f"image{ending}"), useCompression=False)
        sitk.WriteImage(label, str(base / f"label{ending}"), useCompression=False)
        if name == "nii.gz":
            shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{CASE}_0000.nii.gz", base / "image.nii.gz")
        result[name] = (base / f"image{ending}", base / f"label{ending}", {**description, "file_ending": ending})
    em_case = sorted((EM / "imagesTr").iterdir())[0].name.removesuffix("_0000.png")
    result["png"] = (EM / "imagesTr" / f"{em_case}_0000.png", EM / "labelsTr" / f"{em_case}.png",
                     json.loads((EM / "dataset.json").read_text()))
    return result


def _dataset(folder: Path, image: bytes, label: Path, description: dict, ending: str) -> Path:
    dataset = folder / "Dataset993_Fuzz"
    shutil.rmtree(dataset, ignore_errors=True)
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    (dataset / "imagesTr" / f"case_0000{ending}").write_bytes(image)
    shutil.copy(label, dataset / "labelsTr" / f"case{ending}")
    (dataset / "dataset.json").write_text(json.dumps({**description, "numTraining": 1}))
    return dataset / "imagesTr" / f"case_0000{ending}"


def _check_reader(path: Path) -> None:
    try:
        data, geometry = read_finite_case([path], {"0": "image"})
    except AutosegError as exc:
        assert str(path) in str(exc), str(exc)
        return
    assert data.ndim == 4 and np.isfinite(data).all() and len(geometry.spacing) == 3


def _check_verify(folder: Path, path: Path) -> None:
    result = runner.invoke(app, ["verify", str(folder / "Dataset993_Fuzz"), "-np", "1"])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert path.name in result.output, result.output


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_mutated_files_are_read_or_refused_by_name(name: str, originals: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    ending, mutations = FORMATS[name]
    image, label, description = originals[name]
    source = image.read_bytes()
    folder = tmp_path_factory.mktemp(f"fuzz_{name.replace('.', '_')}")
    read_image(image)  # the unmutated file reads

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutation=mutations)
    def fuzz(mutation: Callable[[bytes], bytes]) -> None:
        path = _dataset(folder, mutation(source), label, description, ending)
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            _check_reader(path)
            _check_verify(folder, path)
        finally:
            faulthandler.cancel_dump_traceback_later()

    fuzz()
