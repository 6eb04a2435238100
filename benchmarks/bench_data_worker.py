"""A data worker's CPU per training batch, this checkout against an earlier commit, on every shared dataset.

On 2 cores the data worker shares the CPU with the training step, so each second it spends is a second
the step loses (issue 18 §3, figure 1). For each dataset: ``autoseg plan --budget B -c C`` and
``autoseg preprocess`` in a fresh folder (this checkout), then fold 0's training batches as the trainer
builds them (``training/trainer.py: sampling_specs``: its cases, patch, sample region, batch size and
resolved augmentation) are drawn in a separate process on one thread, every training case opened first
(a long run's steady state; ``common.augmentation_cpu_seconds``, as ``bench_engine_throughput.py`` measures
it), once with this checkout's code and once with ``--before``'s (exported with ``git archive``),
alternating ``--repeats`` times. Reported: CPU seconds per batch (process time; median of the repeats)
and whether the two codes drew the same batches (sha256 of images and labels, hashed outside the timing).

Run: ``python benchmarks/bench_data_worker.py [--before COMMIT] [--batches 100] [--repeats 3]
[--datasets NAME:BUDGET:CONFIGURATION,...] [--work-dir DIR] [--no-doc]`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

DEFAULT_BEFORE = "0154c9a"  # main before the data worker's changes (spatial_transform.py, in-place batches)
DEFAULT_DATASETS = (
    "Dataset004_Hippocampus:30m:3d_fullres,Dataset027_ACDC:10m:3d_fullres,Dataset905_BraTS2015Mini:10m:3d_fullres,"
    "Dataset906_DRIVE:5m:2d,Dataset907_EMMembrane:5m:2d"
)
PROBE_FLAG = "--probe"


def probe(dataset: str, configuration: str, batches: int) -> dict[str, object]:
    """In the process of one code version (``PYTHONPATH``): CPU per batch and the batches' sha256 (hashed
    outside the timing)."""
    import numpy as np

    import autoseg
    from autoseg.planning.constants import DEFAULT_PLANS_NAME
    from autoseg.training.run import resolve_fold_run
    from autoseg.training.trainer import sampling_specs
    from common import augmentation_cpu_seconds

    run = resolve_fold_run(dataset, configuration, "0", None, DEFAULT_PLANS_NAME, [], "cpu", seed=0, deterministic=False,
                           workers=None, epochs=1, budget_seconds=None, resume=False, start_time=time.monotonic())
    plan = run.configuration
    specs = (run, list(plan["patch_size"]), int(plan["batch_size"]), [])
    if "case_cache" in inspect.signature(sampling_specs).parameters:  # the trainer's, for one worker (earlier code: none)
        from autoseg.training.data_loading import case_cache_bytes

        specs += (case_cache_bytes(run.config["case_cache_mb"], 1),)
    spec, _, _ = sampling_specs(*specs)
    digest = hashlib.sha256()

    def hash_batch(batch: dict[str, np.ndarray]) -> None:
        digest.update(np.ascontiguousarray(batch["data"]).tobytes())
        digest.update(np.ascontiguousarray(batch["target"]).tobytes())

    cpu = augmentation_cpu_seconds(spec, batches, hash_batch)
    return {"cpu_per_batch": cpu, "sha256": digest.hexdigest(), "autoseg": autoseg.__file__,
            "patch": list(spec.patch_size), "sample": list(spec.sample_size), "batch": spec.batch_size,
            "labels": len(spec.foreground_labels) + 1}


def export_commit(commit: str, target: Path) -> Path:
    """``commit``'s autoseg package under ``target`` (``git archive``; the repository is not touched)."""
    root = Path(__file__).resolve().parent.parent
    archive = target / "code.tar"
    subprocess.run(["git", "-C", str(root), "archive", "-o", str(archive), commit, "autoseg"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target / "code", filter="data")
    return target / "code"


def run_probe(code: Path, env: dict[str, str], dataset: str, configuration: str, batches: int) -> dict[str, object]:
    command = [sys.executable, __file__, PROBE_FLAG, dataset, configuration, str(batches)]
    done = subprocess.run(command, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"probe failed ({code}, {dataset}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not str(result["autoseg"]).startswith(str(code)):
        raise SystemExit(f"the probe imported {result['autoseg']}, not the code under {code}")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the commit to compare with")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", default=DEFAULT_DATASETS, help="NAME:BUDGET:CONFIGURATION, comma-separated")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the plans and stores here")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing docs/benchmarks.md")
    return parser.parse_args()


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == PROBE_FLAG:
        print(json.dumps(probe(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    from common import autoseg_command, autoseg_env, check, code_version, markdown_table, run_measured, temporary_raw_root, work_folder, write_section

    args = parse_args()
    this_code = Path(__file__).resolve().parent.parent
    rows, records = [], []
    with ExitStack() as stack:
        work = work_folder(stack, args.work_dir, "data-worker")
        before_code = export_commit(args.before, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        for item in args.datasets.split(","):
            dataset, budget, configuration = item.split(":")
            raw = stack.enter_context(temporary_raw_root(dataset))
            env = autoseg_env(raw, work / dataset / "preprocessed", work / dataset / "results", 2)
            for step in (["plan", dataset, "--budget", budget, "-c", configuration, "--device", "cpu", "-np", "2"],
                         ["preprocess", dataset, "-c", configuration, "-np", "2"]):
                check(run_measured([*autoseg_command(), *step], env), f"autoseg {step[0]} {dataset}")
            env["OMP_NUM_THREADS"] = "1"
            measured: dict[str, list[dict[str, object]]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                for name, code in (("before", before_code), ("after", this_code)):
                    measured[name].append(run_probe(code, env, dataset, configuration, args.batches))
                    print(f"{dataset} {name}: {measured[name][-1]['cpu_per_batch']:.4f} s", file=sys.stderr)
            cpu = {name: statistics.median(float(r["cpu_per_batch"]) for r in runs) for name, runs in measured.items()}
            same = len({r["sha256"] for runs in measured.values() for r in runs}) == 1
            first = measured["after"][0]
            rows.append([dataset, f"{configuration}, {budget}", "x".join(map(str, first["patch"])),
                         "x".join(map(str, first["sample"])), first["batch"], first["labels"],
                         f"{cpu['before']:.4f}", f"{cpu['after']:.4f}", f"{cpu['before'] / cpu['after']:.2f}x",
                         "yes" if same else "**no**"])
            records.append({"dataset": dataset, "runs": measured})
    body = f"""`python benchmarks/bench_data_worker.py --before {args.before} --batches {args.batches} --repeats {args.repeats}`
(this checkout: `{code_version()}`; each dataset planned with `autoseg plan NAME --budget BUDGET -c CONFIGURATION
--device cpu -np 2` and preprocessed in a fresh folder).

Fold 0's training batches as the trainer builds them, {args.batches} per measurement, drawn in one process on one
thread with every training case opened first; CPU seconds per batch, median of {args.repeats} alternating runs of
each code. "Same batches": the sha256 of every image and label batch was equal for both codes in every run.

{markdown_table(["dataset", "configuration, budget", "patch", "sample region", "batch", "labels (with background)",
                 f"CPU per batch, `{args.before}` (s)", "CPU per batch, this checkout (s)", "before / after", "same batches"], rows)}
"""
    if args.no_doc:
        print(body)
    else:
        write_section("data_worker", "Data worker CPU per training batch, before and after (issue 18 §3)", body)
    print(json.dumps(records), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
