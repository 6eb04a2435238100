"""Fingerprint time: ``autoseg fingerprint`` against ``nnUNetv2_extract_fingerprint`` (issue 2).

Both read the 208 cases of Dataset004_Hippocampus with the same number of worker processes and one
math thread per process, from a temporary raw root of symlinks (nothing is written into the shared
data), each into a fresh preprocessed root, alternating, best of ``--repeats``. autoseg's command also
verifies every case (it always does); nnU-Net's runs without its opt-in ``--verify_dataset_integrity``.
The two fingerprints are then compared, so the times are known to be for the same work.

Run: ``python benchmarks/bench_fingerprint.py [-np 2] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    HIPPOCAMPUS,
    Measurement,
    alternate,
    autoseg_command,
    autoseg_env,
    check,
    fmt_bytes,
    fmt_seconds,
    markdown_table,
    nnunet_command,
    nnunet_env,
    ratio,
    run_measured,
    temporary_raw_root,
    warm_file_cache,
    write_section,
)

THREADS_PER_PROCESS = 1
INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")


def _fresh(parent: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))


def run_autoseg(raw: Path, work: Path, workers: int, outputs: dict[str, Path]) -> Measurement:
    pre = _fresh(work, "autoseg")
    outputs["autoseg"] = pre / HIPPOCAMPUS / "fingerprint.json"
    command = [*autoseg_command(), "fingerprint", HIPPOCAMPUS, "-np", str(workers)]
    return check(run_measured(command, autoseg_env(raw, pre, pre / "results", THREADS_PER_PROCESS)), "autoseg fingerprint")


def run_nnunet(raw: Path, work: Path, workers: int, outputs: dict[str, Path]) -> Measurement:
    pre = _fresh(work, "nnunet")
    outputs["nnunet"] = pre / HIPPOCAMPUS / "dataset_fingerprint.json"
    command = [nnunet_command("nnUNetv2_extract_fingerprint"), "-d", "4", "-np", str(workers)]
    return check(run_measured(command, nnunet_env(raw, pre, pre / "results", THREADS_PER_PROCESS)), "nnUNetv2_extract_fingerprint")


def _sorted_rows(rows: list[list[float]]) -> list[tuple[float, ...]]:
    return sorted(tuple(round(float(v), 6) for v in row) for row in rows)


def compare_fingerprints(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Lines saying where the two fingerprints agree (per-case lists compared as sorted multisets)."""
    lines = []
    for key in ("spacings", "shapes_after_crop"):
        same = _sorted_rows(ours[key]) == _sorted_rows(theirs[key])
        lines.append(f"`{key}` of all {len(ours[key])} cases: {'identical' if same else 'DIFFERENT'}")
    a = ours["foreground_intensity_properties_per_channel"]["0"]
    b = theirs["foreground_intensity_properties_per_channel"]["0"]
    diffs = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in INTENSITY_KEYS}
    worst = max(diffs, key=diffs.get)
    lines.append(
        "foreground intensity statistics (both sample voxels at random): largest relative difference "
        f"{diffs[worst]:.2%} ({worst}: autoseg {a[worst]:.2f}, nnU-Net {b[worst]:.2f})"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-np", "--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    nnunet_command("nnUNetv2_extract_fingerprint")  # create the venv before anything is timed

    with temporary_raw_root() as raw, tempfile.TemporaryDirectory(prefix="autoseg-bench-out-") as tmp:
        work = Path(tmp)
        warm_file_cache(raw / HIPPOCAMPUS)
        num_cases = len(list((raw / HIPPOCAMPUS / "labelsTr").iterdir()))
        outputs: dict[str, Path] = {}
        best = alternate(
            {
                "nnunet": lambda: run_nnunet(raw, work, args.num_workers, outputs),
                "autoseg": lambda: run_autoseg(raw, work, args.num_workers, outputs),
            },
            args.repeats,
        )
        agreement = compare_fingerprints(
            json.loads(outputs["autoseg"].read_text()), json.loads(outputs["nnunet"].read_text())
        )

    a, n = best["autoseg"], best["nnunet"]
    table = markdown_table(
        ["", "nnU-Net v2", "autoseg", "ratio nnU-Net / autoseg"],
        [
            ["wall time (best of %d)" % args.repeats, fmt_seconds(n.wall_s), fmt_seconds(a.wall_s), ratio(n.wall_s, a.wall_s)],
            ["peak RSS, process tree", fmt_bytes(n.peak_rss_bytes), fmt_bytes(a.peak_rss_bytes), ratio(n.peak_rss_bytes, a.peak_rss_bytes)],
        ],
    )
    np_ = args.num_workers
    body = f"""
{num_cases} cases of `{HIPPOCAMPUS}`, {np_} worker processes each, `OMP_NUM_THREADS=1`, file cache warm,
runs alternating nnU-Net / autoseg, {args.repeats} rounds, the fastest kept. The machine is shared with
other jobs (load average above): the ratio is the number to read, absolute times vary from run to run. `$RAW` is a temporary raw root
of symlinks to `../shared/data`, `$PRE` a fresh empty folder for every run.

```
nnUNet_raw=$RAW nnUNet_preprocessed=$PRE nnUNet_results=$PRE/results nnUNetv2_extract_fingerprint -d 4 -np {np_}
AUTOSEG_RAW=$RAW AUTOSEG_PREPROCESSED=$PRE autoseg fingerprint {HIPPOCAMPUS} -np {np_}
```

{table}

autoseg's run includes verifying every case (geometry, label values, NaN/Inf), which nnU-Net skips
unless `--verify_dataset_integrity` is given. Same results:
""" + "\n".join(f"- {line}" for line in agreement) + f"""

Reproduce: `python benchmarks/bench_fingerprint.py -np {np_} --repeats {args.repeats}`.
"""
    write_section("fingerprint", "Fingerprint extraction (issue 2)", body)
    print(table)
    print("\n".join(agreement))


if __name__ == "__main__":
    sys.exit(main())
