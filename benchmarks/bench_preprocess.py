"""Fingerprint + plan + preprocess: autoseg against ``nnUNetv2_plan_and_preprocess`` (issue 4).

autoseg runs its three stage commands (``fingerprint``, ``plan``, ``preprocess -c 3d_fullres``), nnU-Net
its one command that does the same three steps for 3d_fullres, both with the same number of worker
processes (nnU-Net's fingerprint workers are ``-npfp``, its preprocessing workers ``-np``) and one math
thread per process, on the 208 cases of Dataset004_Hippocampus from a temporary raw root of symlinks,
each into a fresh preprocessed root, alternating, best of ``--repeats``. Reported: wall time, peak RSS
of the process tree, and the disk size of each tool's preprocessed dataset folder.

Run: ``python benchmarks/bench_preprocess.py [-np 2] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    HIPPOCAMPUS,
    Measurement,
    alternate,
    autoseg_command,
    autoseg_env,
    check,
    combined,
    fmt_bytes,
    fmt_seconds,
    folder_size_bytes,
    markdown_table,
    nnunet_command,
    nnunet_env,
    ratio,
    run_measured,
    run_sequence,
    temporary_raw_root,
    thread_env,
    warm_file_cache,
    write_section,
)

THREADS_PER_PROCESS = 1
CONFIGURATION = "3d_fullres"
AUTOSEG_STAGES = ("fingerprint", "plan", "preprocess")


def missing_autoseg_commands() -> list[str]:
    """The stage commands this autoseg does not have yet (``autoseg STAGE --help`` fails)."""
    return [
        stage for stage in AUTOSEG_STAGES
        if subprocess.run([*autoseg_command(), stage, "--help"], capture_output=True, env=thread_env(1)).returncode != 0
    ]


def autoseg_commands(workers: int) -> list[list[str]]:
    cli = autoseg_command()
    return [
        [*cli, "fingerprint", HIPPOCAMPUS, "-np", str(workers)],
        [*cli, "plan", HIPPOCAMPUS, "-np", str(workers)],
        [*cli, "preprocess", HIPPOCAMPUS, "-c", CONFIGURATION, "-np", str(workers)],
    ]


def nnunet_arguments(workers: int) -> list[str]:
    return ["-d", "4", "-c", CONFIGURATION, "-np", str(workers), "-npfp", str(workers)]


class Runs:
    """The two tools' runs; keeps per-stage times of autoseg's fastest run and each tool's output size."""

    def __init__(self, raw: Path, work: Path, workers: int) -> None:
        self.raw, self.work, self.workers = raw, work, workers
        self.autoseg_stages: list[Measurement] = []
        self.sizes: dict[str, int] = {}

    def _fresh(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))

    def autoseg(self) -> Measurement:
        pre = self._fresh("autoseg")
        env = autoseg_env(self.raw, pre, pre / "results", THREADS_PER_PROCESS)
        stages = run_sequence(autoseg_commands(self.workers), env)
        result = check(combined(stages), "autoseg fingerprint/plan/preprocess")
        if not self.autoseg_stages or result.wall_s < combined(self.autoseg_stages).wall_s:
            self.autoseg_stages = stages
        self.sizes["autoseg"] = folder_size_bytes(pre / HIPPOCAMPUS)
        return result

    def nnunet(self) -> Measurement:
        pre = self._fresh("nnunet")
        command = [nnunet_command("nnUNetv2_plan_and_preprocess"), *nnunet_arguments(self.workers)]
        env = nnunet_env(self.raw, pre, pre / "results", THREADS_PER_PROCESS)
        result = check(run_measured(command, env), "nnUNetv2_plan_and_preprocess")
        self.sizes["nnunet"] = folder_size_bytes(pre / HIPPOCAMPUS)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-np", "--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    missing = missing_autoseg_commands()
    if missing:
        print(
            f"not run: this autoseg has no `{'`, `'.join('autoseg ' + m for m in missing)}` command yet "
            "(the planner / preprocessing stages have not landed); docs/benchmarks.md is left unchanged",
            file=sys.stderr,
        )
        return 2
    nnunet_command("nnUNetv2_plan_and_preprocess")  # create the venv before anything is timed

    with temporary_raw_root() as raw, tempfile.TemporaryDirectory(prefix="autoseg-bench-out-") as tmp:
        warm_file_cache(raw / HIPPOCAMPUS)
        runs = Runs(raw, Path(tmp), args.num_workers)
        best = alternate({"nnunet": runs.nnunet, "autoseg": runs.autoseg}, args.repeats)

    a, n = best["autoseg"], best["nnunet"]
    table = markdown_table(
        ["", "nnU-Net v2", "autoseg", "ratio nnU-Net / autoseg"],
        [
            [f"wall time (best of {args.repeats})", fmt_seconds(n.wall_s), fmt_seconds(a.wall_s), ratio(n.wall_s, a.wall_s)],
            ["peak RSS, process tree", fmt_bytes(n.peak_rss_bytes), fmt_bytes(a.peak_rss_bytes), ratio(n.peak_rss_bytes, a.peak_rss_bytes)],
            ["disk, preprocessed dataset folder", fmt_bytes(runs.sizes["nnunet"]), fmt_bytes(runs.sizes["autoseg"]), ratio(runs.sizes["nnunet"], runs.sizes["autoseg"])],
        ],
    )
    stages = ", ".join(f"{name} {fmt_seconds(m.wall_s)}" for name, m in zip(AUTOSEG_STAGES, runs.autoseg_stages))
    np_ = args.num_workers
    body = f"""
208 cases of `{HIPPOCAMPUS}`, {np_} worker processes each, `OMP_NUM_THREADS=1`, file cache warm, runs
alternating nnU-Net / autoseg, {args.repeats} rounds, the fastest kept. The machine is shared with other
jobs (load average above): the ratio is the number to read. `$RAW` is a temporary raw root of symlinks
to `../shared/data`, `$PRE` a fresh empty folder for every run. Goal (issue 4): at most half nnU-Net's time.

```
nnUNet_raw=$RAW nnUNet_preprocessed=$PRE nnUNet_results=$PRE/results nnUNetv2_plan_and_preprocess {" ".join(nnunet_arguments(np_))}
export AUTOSEG_RAW=$RAW AUTOSEG_PREPROCESSED=$PRE
autoseg fingerprint {HIPPOCAMPUS} -np {np_}
autoseg plan {HIPPOCAMPUS} -np {np_}
autoseg preprocess {HIPPOCAMPUS} -c {CONFIGURATION} -np {np_}
```

{table}

autoseg's stages in its fastest run: {stages}. `autoseg plan` times training iterations of its
candidate networks on this machine for the compute budget (nnU-Net's planner does not); a fresh `$PRE`
means every run here pays that, later plans of the same dataset read `planning_cache/`. Disk is what
`du` counts for `$PRE/{HIPPOCAMPUS}` (fingerprint, plans, preprocessed arrays, ground-truth copies).

Reproduce: `python benchmarks/bench_preprocess.py -np {np_} --repeats {args.repeats}`.
"""
    write_section("preprocess", "Fingerprint + plan + preprocess, 3d_fullres (issue 4)", body)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
