"""A damaged preprocessed store: a case's array cut short, emptied or corrupt inside, its properties JSON
empty or invalid. ``preprocess`` redoes such a case instead of calling it "already done", and every
reader (store, batch source, data workers, ``autoseg train``) names the file, what is wrong and the fix."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from autoseg.errors import PreprocessingError, TrainingError
from autoseg.preprocessing.runner import preprocess_dataset
from autoseg.preprocessing.store import list_cases, load_case, load_properties
from autoseg.training.data_loading import TRAIN_STREAM, BatchSource, BatchStream, SamplingSpec

from cli_helpers import TRAIN_SETTINGS, autoseg, autoseg_fails, set_options
from training_helpers import DATASET, PATCH, build_dataset

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
CASE = "hippocampus_003"
FIX = f"re-run `autoseg preprocess {DATASET}`"


@pytest.fixture
def store(roots: dict[str, Path]) -> Path:
    """Four real cases preprocessed with the training tests' tiny plan; the store folder."""
    build_dataset(roots, CASES)
    return roots["preprocessed"] / DATASET / "autosegPlans_3d_fullres"


def cut_short(path: Path) -> None:
    """Keep the first half of the file, as a full disk or an interrupted copy does."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_first_chunk(path: Path) -> None:
    """Damage inside the file that opening cannot see: the first chunk's compressed size (bytes 12-15 of
    its header, which follows the frame header whose length is bytes 11-14 of the file; blosc2's
    README_CFRAME_FORMAT.rst and README_CHUNK_FORMAT.rst)."""
    content = bytearray(path.read_bytes())
    chunk = struct.unpack(">i", content[11:15])[0]
    content[chunk + 12: chunk + 16] = struct.pack("<i", 2**31 - 1)
    path.write_bytes(bytes(content))


DAMAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (file suffix, damage, what the error says)
    "data cut short": (".b2nd", cut_short, "cannot be opened as a blosc2 array (cut short or overwritten)"),
    "labels cut by one byte": ("_seg.b2nd", lambda p: p.write_bytes(p.read_bytes()[:-1]), "cannot be opened"),
    "data emptied by a power loss": (".b2nd", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "properties empty": (".json", lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "properties cut short": (".json", cut_short, "is not valid JSON"),
    "properties not an object": (".json", lambda p: p.write_text("[]"), "holds a JSON list"),
    "data of another case": (".b2nd", lambda p: shutil.copyfile(p.with_name("hippocampus_001.b2nd"), p),
                             "where its properties say"),
}


@pytest.mark.parametrize("name", DAMAGES)
def test_preprocess_redoes_a_damaged_case_and_only_it(store: Path, name: str) -> None:
    suffix, damage, _ = DAMAGES[name]
    before = load_case(store, CASE, mmap=False)
    damage(store / f"{CASE}{suffix}")
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    out = report.outputs[0]
    assert out.processed == [CASE] and out.damaged == [CASE] and len(out.skipped) == 3
    assert f"found damaged, hence redone: {CASE}" in report.summary()
    data, seg, properties = load_case(store, CASE, mmap=False)
    np.testing.assert_array_equal(data, before[0])
    np.testing.assert_array_equal(seg, before[1])
    assert properties == before[2]
    assert preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1).outputs[0].damaged == []


@pytest.mark.parametrize("name", DAMAGES)
def test_reading_a_damaged_case_names_the_file_the_problem_and_the_fix(store: Path, name: str) -> None:
    suffix, damage, problem = DAMAGES[name]
    damaged = store / f"{CASE}{suffix}"
    damage(damaged)
    for read in (lambda: load_case(store, CASE), lambda: load_case(store, CASE, mmap=False)):
        with pytest.raises(PreprocessingError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{damaged}: ") and problem in message and FIX in message, message
        assert "it redoes this case" in message


def test_an_empty_properties_file_is_named_where_only_the_properties_are_read(store: Path) -> None:
    (store / f"{CASE}.json").write_bytes(b"")
    with pytest.raises(PreprocessingError, match=rf"^{store / CASE}\.json: is empty \(0 bytes\); .*{FIX}"):
        load_properties(store, CASE)


def test_damage_inside_a_file_is_named_when_read_and_redone_once_deleted(store: Path) -> None:
    damaged = store / f"{CASE}.b2nd"
    corrupt_first_chunk(damaged)
    handle, _, _ = load_case(store, CASE)  # the header and trailer are intact: it opens
    with pytest.raises(PreprocessingError) as info:
        handle[:, :4]
    message = str(info.value)
    assert message.startswith(f"{damaged}: a chunk cannot be decompressed (") and "RuntimeError" not in message
    assert f"delete the file, then {FIX}" in message
    damaged.unlink()  # the fix the message gives
    assert preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1).outputs[0].processed == [CASE]
    assert load_case(store, CASE, mmap=False)[0].shape[0] == 1


def flip_inside_first_chunk(path: Path) -> None:
    """Bytes changed in compressed data (64 bytes past the first chunk's 32-byte header: in it, or in a
    later chunk when it is smaller), the file's size unchanged: zstd frames carry no checksum, so most such
    damage decompressed into wrong values silently."""
    content = bytearray(path.read_bytes())
    chunk = struct.unpack(">i", content[11:15])[0]
    for offset in range(chunk + 96, chunk + 104):
        content[offset] ^= 0xFF
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("suffix", [".b2nd", "_seg.b2nd"])
def test_bytes_changed_inside_a_chunk_are_named_not_read_as_values(store: Path, suffix: str) -> None:
    damaged = store / f"{CASE}{suffix}"
    flip_inside_first_chunk(damaged)
    data, seg, _ = load_case(store, CASE)
    with pytest.raises(PreprocessingError) as info:
        (data if suffix == ".b2nd" else seg)[:, :4]
    assert re.match(rf"{damaged}: chunk\(s\) \d+ of \d+ do not match the checksums written with them \(bytes changed "
                    rf"inside the file\); .*delete the file, then {FIX}", str(info.value))


def test_any_byte_changed_in_a_files_header_is_named_or_harmless(store: Path) -> None:
    """A changed header byte could overflow a field of blosc2's (an OverflowError traceback at opening)."""
    path = store / f"{CASE}.b2nd"
    original, expected = path.read_bytes(), load_case(store, CASE, mmap=False)[0]
    for offset in range(128):
        path.write_bytes(original[:offset] + bytes([original[offset] ^ 0xFF]) + original[offset + 1:])
        try:
            values = load_case(store, CASE)[0][...]
        except PreprocessingError as exc:
            assert str(exc).startswith(f"{path}: ") and FIX in str(exc)
        else:
            assert np.array_equal(values, expected), offset


@pytest.mark.parametrize("suffix", [".b2nd", "_seg.b2nd"])
def test_a_store_written_before_chunk_checksums_is_refused_and_redone(store: Path, suffix: str) -> None:
    """An array stored before the checksums (no ``chunk_crc32`` record) was read unchecked, for good: damage
    inside it decompressed into wrong values without a word. It is refused naming the fix, and preprocess
    redoes its case (as stale, not as damaged)."""
    import blosc2

    old = store / f"{CASE}{suffix}"
    before = load_case(store, CASE, mmap=False)
    array = blosc2.open(str(old), mode="a")
    del array.schunk.vlmeta["chunk_crc32"]
    del array
    with pytest.raises(PreprocessingError) as info:
        load_case(store, CASE)
    assert str(info.value) == (f"{old}: was stored by an older autoseg, without the checksums of its chunks that every "
                               f"read now checks; {FIX} with the -c and --plans-name that made {store.name}; it redoes "
                               "this case")
    out = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1).outputs[0]
    assert out.processed == [CASE] and out.damaged == [] and len(out.skipped) == 3
    after = load_case(store, CASE, mmap=False)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def _spec(store: Path, case_ids: list[str]) -> SamplingSpec:
    """Cases decompressed whole on first use (a cache of 1 GiB), so every chunk is read."""
    return SamplingSpec(folder=store, case_ids=case_ids, patch_size=PATCH, sample_size=PATCH, batch_size=2,
                        oversample_foreground=0.5, foreground_labels=[1, 2], case_cache_bytes=2**30)


def test_the_batch_source_names_a_damaged_case_before_the_first_batch(store: Path) -> None:
    cut_short(store / f"{CASE}_seg.b2nd")
    with pytest.raises(PreprocessingError, match=rf"^{store / CASE}_seg\.b2nd: cannot be opened .*{FIX}"):
        BatchSource(_spec(store, list_cases(store)), seed=0, stream=TRAIN_STREAM)


@pytest.mark.parametrize("suffix", [".b2nd", "_seg.b2nd"])
def test_a_case_whose_array_went_missing_is_listed_and_named(store: Path, suffix: str) -> None:
    (store / f"{CASE}{suffix}").unlink()
    assert CASE in list_cases(store)  # not silently left out of training
    with pytest.raises(PreprocessingError, match=rf"^{store / CASE}{suffix}: is missing; .*{FIX}"):
        BatchSource(_spec(store, list_cases(store)), seed=0, stream=TRAIN_STREAM)
    assert preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1).outputs[0].damaged == [CASE]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_case_damaged_inside_is_named_by_the_batch_stream(store: Path, workers: int) -> None:
    source = BatchSource(_spec(store, [CASE]), seed=0, stream=TRAIN_STREAM)
    corrupt_first_chunk(store / f"{CASE}.b2nd")  # passes the source's opening check
    error = TrainingError if workers else PreprocessingError
    with BatchStream(source, num_workers=workers) as stream, pytest.raises(error) as info:
        next(stream)
    message = str(info.value)
    assert f"{store / CASE}.b2nd: a chunk cannot be decompressed" in message and FIX in message
    assert "RuntimeError" not in message and "(at " not in message


def test_train_refuses_a_damaged_store_in_one_line_and_preprocess_repairs_it(store: Path) -> None:
    cut_short(store / f"{CASE}.b2nd")
    train = ["train", DATASET, "3d_fullres", "all", "--epochs", 1, "--device", "cpu", "--workers", 0,
             *set_options(TRAIN_SETTINGS)]
    output = autoseg_fails(*train)
    assert f"{store / CASE}.b2nd: cannot be opened as a blosc2 array" in output and FIX in output
    assert f"found damaged, hence redone: {CASE}" in autoseg("preprocess", DATASET, "-c", "3d_fullres", "-np", 1)
