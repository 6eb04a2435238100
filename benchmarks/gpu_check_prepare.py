"""Build ``.gpu_bundle/``: everything ``benchmarks/gpu_check.sh`` needs on a bare GPU machine (issue 19).

The GPU machine reaches no package registry and receives only a copy of the working tree (64 MiB at
most, ``../shared`` stays behind). Its Python already holds torch (CUDA), numpy, scipy, scikit-image,
typer, rich, pyyaml, matplotlib, pandas, ...; this script gathers the rest here, where PyPI is reachable:

- ``wheels/``: autoseg's and nnU-Net v2's packages that image lacks (blosc2 and its compiled
  dependencies for CPython 3.12, batchgenerators, nnunetv2, dynamic-network-architectures, acvl_utils,
  batchgeneratorsv2, nibabel, connected-components-3d, ...), downloaded, never built there;
- ``simpleitk.tar.xz``: SimpleITK's package directory, xz-compressed (its 53 MB wheel alone would
  nearly fill the 64 MiB; xz brings it to about 29 MB), unpacked into site-packages there;
- ``raw/``: a Dataset004 subset (its 42 fold-0 validation cases of the full 208-case split, plus
  ``--train-cases`` more), one ACDC case and one BraTS-mini case, in nnU-Net's raw layout;
- ``fingerprints/<Dataset>.json``: autoseg's fingerprints of the FULL datasets, so that the plans made
  there are the plans of the real datasets, not of the subset;
- ``nnunet/<Dataset>/``: nnU-Net v2's own plans (``nnUNetPlans.json``) and fingerprint of the full
  Dataset004 and Dataset905, made here with nnU-Net (its plans do not depend on the GPU: 8 GB target).

Run: ``python benchmarks/gpu_check_prepare.py [--bundle .gpu_bundle] [--train-cases 38]`` (idempotent:
finished parts are kept; about 5-10 minutes the first time on 2 cores, mostly xz and fingerprints).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from common import DATA_ROOT, REPO_ROOT, autoseg_command, autoseg_env, nnunet_command, nnunet_env, temporary_raw_root

HIPPOCAMPUS, ACDC, BRATS = "Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset905_BraTS2015Mini"
ACDC_CASE, BRATS_CASE = "patient002_frame01", "brats_2013_pat0001_1"
DEVICE_PYTHON = "3.12"  # the GPU image's python3 (device README: Python 3.12.3)
# Wheels the GPU image lacks. Binary ones are fetched for CPython 3.12 / manylinux x86-64.
# Only what autoseg's and nnU-Net's training and prediction import (checked: pydantic, future, unittest2,
# yacs and graphviz are declared by them but never imported there), to stay inside the 64 MiB.
BINARY_WHEELS = ["blosc2", "ndindex", "numexpr", "connected-components-3d"]
PURE_WHEELS = ["batchgenerators", "batchgeneratorsv2", "nnunetv2", "dynamic-network-architectures", "nibabel"]
SDIST_ONLY = ["acvl_utils"]  # built into a (pure-Python) wheel here, so nothing is built there
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
LIMIT_BYTES = 64 * 2**20


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=sys.stderr)


def fetch_wheels(folder: Path) -> None:
    if folder.is_dir() and any(folder.glob("nnunetv2-*.whl")):
        return
    folder.mkdir(parents=True, exist_ok=True)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    for name in BINARY_WHEELS:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
            *platform_args, "-d", str(folder), name)
    for name in PURE_WHEELS:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON, "-d", str(folder), name)
    for name in SDIST_ONLY:
        pip("wheel", "--quiet", "--no-deps", "-w", str(folder), name)


def pack_simpleitk(target: Path) -> None:
    """SimpleITK's package directory and dist-info as one xz tar (the wheel's files, unchanged)."""
    if target.is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
            *[a for p in PLATFORMS for a in ("--platform", p)], "-d", tmp, "SimpleITK")
        wheel = next(Path(tmp).glob("simpleitk-*.whl"))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        partial = target.with_suffix(".partial")
        with tarfile.open(partial, "w:xz", preset=6) as tar:
            for entry in sorted(unpacked.iterdir()):
                tar.add(entry, arcname=entry.name)
        partial.replace(target)


def copy_cases(source: Path, target: Path, cases: list[str]) -> None:
    """``cases`` of ``source`` (images of every channel and labels) as a raw dataset in ``target``."""
    if (target / "dataset.json").is_file():
        return
    description = json.loads((source / "dataset.json").read_text())
    ending = description["file_ending"]
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        for image in sorted((source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            shutil.copy2(image, target / "imagesTr" / image.name)
        shutil.copy2(source / "labelsTr" / f"{case}{ending}", target / "labelsTr" / f"{case}{ending}")
    description["numTraining"] = len(cases)
    (target / "dataset.json").write_text(json.dumps(description, indent=2))


def hippocampus_cases(train_cases: int) -> tuple[list[str], list[str]]:
    """(the 42 fold-0 validation cases of the full 208-case split, the first ``train_cases`` others)."""
    from autoseg.training.splits import kfold_splits

    ending = json.loads((DATA_ROOT / HIPPOCAMPUS / "dataset.json").read_text())["file_ending"]
    all_cases = sorted(p.name[: -len(ending)] for p in (DATA_ROOT / HIPPOCAMPUS / "labelsTr").glob(f"*{ending}"))
    validation = kfold_splits(all_cases)[0]["val"]
    others = [c for c in all_cases if c not in set(validation)][:train_cases]
    return validation, others


def autoseg_fingerprints(folder: Path) -> None:
    """autoseg's fingerprint of each full dataset (read through a raw root of symlinks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in (HIPPOCAMPUS, ACDC, BRATS):
        target = folder / f"{dataset}.json"
        if target.is_file():
            continue
        with temporary_raw_root(dataset) as raw, tempfile.TemporaryDirectory() as pre:
            env = autoseg_env(raw, Path(pre), Path(pre) / "results", 2)
            subprocess.run([*autoseg_command(), "fingerprint", dataset, "-np", "2"], env=env, check=True, stdout=sys.stderr)
            shutil.copy2(Path(pre) / dataset / "fingerprint.json", target)


def nnunet_plans(folder: Path) -> None:
    """nnU-Net v2's default plans (and fingerprint) of the full Dataset004 and Dataset905."""
    for dataset_id, dataset in ((4, HIPPOCAMPUS), (905, BRATS)):
        target = folder / dataset
        if (target / "nnUNetPlans.json").is_file():
            continue
        with temporary_raw_root(dataset) as raw, tempfile.TemporaryDirectory() as pre:
            env = nnunet_env(raw, Path(pre), Path(pre) / "results", 1)
            subprocess.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
                            "-np", "2", "-npfp", "2", "--no_pp"], env=env, check=True, stdout=sys.stderr)
            target.mkdir(parents=True, exist_ok=True)
            for name in ("nnUNetPlans.json", "dataset_fingerprint.json"):
                shutil.copy2(Path(pre) / dataset / name, target / name)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / ".gpu_bundle")
    parser.add_argument("--train-cases", type=int, default=18, help="Dataset004 cases added to the 42 validation cases")
    args = parser.parse_args()
    bundle: Path = args.bundle
    bundle.mkdir(exist_ok=True)
    fetch_wheels(bundle / "wheels")
    pack_simpleitk(bundle / "simpleitk.tar.xz")
    validation, train = hippocampus_cases(args.train_cases)
    copy_cases(DATA_ROOT / HIPPOCAMPUS, bundle / "raw" / HIPPOCAMPUS, sorted(validation + train))
    copy_cases(DATA_ROOT / ACDC, bundle / "raw" / ACDC, [ACDC_CASE])
    copy_cases(DATA_ROOT / BRATS, bundle / "raw" / BRATS, [BRATS_CASE])
    autoseg_fingerprints(bundle / "fingerprints")
    nnunet_plans(bundle / "nnunet")
    manifest = {"hippocampus_fold0_validation": validation, "acdc_case": ACDC_CASE, "brats_case": BRATS_CASE}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    tree = sum(REPO_ROOT.joinpath(p).stat().st_size for p in subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True,
        check=True).stdout.split() if REPO_ROOT.joinpath(p).is_file())
    total = tree + folder_bytes(bundle)
    print(f"bundle {folder_bytes(bundle) / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{total / 2**20:.1f} MiB of the 64 MiB the device accepts")
    if total > LIMIT_BYTES:
        print("too large: lower --train-cases", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
