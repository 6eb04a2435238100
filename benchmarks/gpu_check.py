"""GPU check (issue 19): speed and memory of autoseg against nnU-Net v2 on the same GPU, in one run.

Run by ``benchmarks/gpu_check.sh`` on the lent GPU machine with the bundle that
``benchmarks/gpu_check_prepare.py`` built here (``.gpu_bundle/``). Every measurement is one step; each
step's result (or its error) is written to ``OUT/gpu_check.json`` as soon as it ends, so a run cut short
still reports what it measured. ``gpu_check_report.py`` turns that JSON into the docs/benchmarks.md section.

Steps (both tools on the same GPU, same data, same run):
1. training iterations per second after warm-up: nnU-Net v2's default 3d_fullres plan of Dataset004 in
   nnU-Net (its trainer, its data loading, its defaults: fp16 autocast, torch.compile where it enables it)
   and in autoseg (the same network, patch and batch, converted to an autoseg plan); autoseg's own plan
   for 8 GB and for the whole GPU;
2. peak GPU memory of autoseg training steps (``torch.cuda.max_memory_allocated``, logged by the trainer
   per epoch) for Dataset004, ACDC and BraTS-mini 3d_fullres, each planned for the GPU's memory and for
   8 GB, against the planner's ``predicted_memory_bytes``;
3. prediction time with TTA of the 42 fold-0 validation cases of Dataset004 and of one 240x240x155
   BraTS case, both tools, autoseg with torch.compile off and on;
4. a 2-process DDP run (``torchrun --nproc-per-node 2``) when the machine has two GPUs.

``--smoke`` runs every step with tiny counts (a CPU can run it: ``--device cpu``) to test the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HIPPOCAMPUS, ACDC, BRATS = "Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset905_BraTS2015Mini"
DATASET_IDS = {HIPPOCAMPUS: 4, ACDC: 27, BRATS: 905}
CONFIG = "3d_fullres"
PLANS_GPU, PLANS_8GB, PLANS_NNUNET = "gpuPlans", "gpu8Plans", "nnUNetPlans"

# nnU-Net's trainer, timed step by step exactly as its own loop runs them (train_step on the next batch
# of its background data loader); the final checkpoint it writes predicts in step 3.
NNUNET_TRAIN_SNIPPET = r"""
import json, sys, time
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

dataset, device, warmup, timed = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
dataset_json = load_json(join(nnUNet_preprocessed, dataset, "dataset.json"))
plans["continue_training"] = False  # what nnU-Net's run_training sets before building its trainer (2.8)
trainer = nnUNetTrainer(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json, device=device)
trainer.num_epochs = 1
start = time.perf_counter()
trainer.on_train_start()
setup = time.perf_counter() - start
trainer.on_epoch_start()
def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(warmup):
    trainer.train_step(next(trainer.dataloader_train))
sync()
warm = time.perf_counter() - start
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for _ in range(timed):
    trainer.train_step(next(trainer.dataloader_train))
sync()
seconds = time.perf_counter() - start
peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
trainer.on_train_end()
print(json.dumps({"iterations_per_second": timed / seconds, "timed_iterations": timed, "warmup_iterations": warmup,
                  "warmup_seconds": warm, "setup_seconds": setup, "peak_memory_bytes": peak,
                  "batch_size": trainer.configuration_manager.batch_size,
                  "patch_size": list(trainer.configuration_manager.patch_size),
                  "compiled": bool(trainer._do_i_compile()), "amp": trainer.grad_scaler is not None}))
"""

# nnU-Net's prediction entry point (nnUNetv2_predict) with its default TTA.
NNUNET_PREDICT_SNIPPET = r"""
import sys
from nnunetv2.inference.predict_from_raw_data import predict_entry_point
sys.argv = ["nnUNetv2_predict", *sys.argv[1:]]
predict_entry_point()
"""

NNUNET_PREPROCESS_SNIPPET = r"""
import sys
from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import preprocess_entry
sys.argv = ["nnUNetv2_preprocess", *sys.argv[1:]]
preprocess_entry()
"""


class Check:
    """The run's state: where things are, and the results JSON rewritten after every step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bundle: Path = args.bundle.resolve()
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.raw = self.bundle / "raw"
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        self.results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke,
                                        "device": args.device, "steps": {}}
        self.log = open(self.out / "gpu_check.log", "a", encoding="utf-8")
        self.deadline = time.monotonic() + args.deadline_seconds  # steps not started by then are skipped

    # ------------------------------------------------------------------------------ bookkeeping
    def save(self) -> None:
        path = self.out / "gpu_check.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.results, indent=1, default=str))
        partial.replace(path)

    def step(self, name: str, func: Callable[[], Any]) -> Any:
        """Run one measurement; its result or its error goes into the JSON either way."""
        print(f"== {name}", file=sys.stderr, flush=True)
        if time.monotonic() > self.deadline:
            self.results["steps"][name] = {"ok": False, "skipped": True, "error": "not run: the check's time was up"}
            self.save()
            return None
        self.log.write(f"\n===== {name} {time.strftime('%H:%M:%S')}\n")
        start = time.perf_counter()
        try:
            value = func()
            entry = {"ok": True, "result": value}
        except Exception as exc:  # a failed step must not cost the others
            value = None
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.results["steps"][name] = entry
        self.save()
        print(f"   {'ok' if entry['ok'] else 'FAILED: ' + entry['error'][-300:]} ({entry['seconds']} s)", file=sys.stderr, flush=True)
        return value

    def run(self, command: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
        """Run ``command``; (wall seconds, stdout). Output goes to the log; failure raises with its tail."""
        self.log.write("$ " + " ".join(command) + "\n")
        self.log.flush()
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - start
        self.log.write(result.stdout[-20000:] + result.stderr[-20000:] + "\n")
        self.log.flush()
        if result.returncode != 0:
            raise RuntimeError(f"exit {result.returncode}: {' '.join(command[:6])} ...: {result.stderr[-1500:]}")
        return seconds, result.stdout

    # ------------------------------------------------------------------------------ environments
    def threads_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("nnUNet_n_proc_DA", str(max(2, (os.cpu_count() or 2) - 2)))
        return env

    def nnunet_env(self) -> dict[str, str]:
        env = self.threads_env()
        for var in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS"):
            env.pop(var, None)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.work / "nnunet_pre"),
                   nnUNet_results=str(self.work / "nnunet_results"))
        return env

    def autoseg_env(self) -> dict[str, str]:
        env = self.threads_env()
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env.pop(var, None)
        env.update(AUTOSEG_RAW=str(self.raw), AUTOSEG_PREPROCESSED=str(self.work / "autoseg_pre"),
                   AUTOSEG_RESULTS=str(self.work / "autoseg_results"))
        return env

    def nnunet(self, snippet: str, *arguments: str, timeout: float = 900) -> tuple[float, str]:
        """Run ``snippet`` with nnU-Net's Python, inside a main guard: nnU-Net's pools spawn processes
        that re-import the script."""
        script = self.work / f"snippet_{abs(hash(snippet))}.py"
        script.write_text(f"def _main():\n{textwrap.indent(snippet, '    ')}\n\nif __name__ == '__main__':\n    _main()\n")
        return self.run([self.args.nnunet_python, str(script), *arguments], self.nnunet_env(), timeout)

    def autoseg(self, *arguments: str, timeout: float = 900) -> tuple[float, str]:
        return self.run([sys.executable, "-m", "autoseg", *arguments], self.autoseg_env(), timeout)

    @property
    def workers(self) -> str:
        return str(max(1, min(8, (os.cpu_count() or 2) - 1)))


# ---------------------------------------------------------------------------------- the steps
def environment(check: Check) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if info["cuda_devices"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    nvidia = shutil.which("nvidia-smi")
    if nvidia:
        info["nvidia_smi"] = subprocess.run([nvidia, "-L"], capture_output=True, text=True, check=False).stdout.strip()
    return info


def validation_folder(check: Check, cases: list[str]) -> Path:
    """A folder of links to the validation cases' images (the inputs of both tools' predict)."""
    folder = check.work / "hippocampus_val"
    folder.mkdir(exist_ok=True)
    for case in cases:
        name = f"{case}_0000.nii.gz"
        (folder / name).symlink_to(check.raw / HIPPOCAMPUS / "imagesTr" / name)
    return folder


def nnunet_prepare(check: Check, dataset: str) -> None:
    """nnU-Net's carried plans of the full dataset, then its preprocessing of the carried cases."""
    target = check.work / "nnunet_pre" / dataset
    target.mkdir(parents=True, exist_ok=True)
    for name in ("nnUNetPlans.json", "dataset_fingerprint.json"):
        shutil.copy2(check.bundle / "nnunet" / dataset / name, target / name)
    shutil.copy2(check.raw / dataset / "dataset.json", target / "dataset.json")
    check.nnunet(NNUNET_PREPROCESS_SNIPPET, "-d", str(DATASET_IDS[dataset]), "-c", CONFIG, "-np", check.workers)


def nnunet_train(check: Check) -> dict[str, Any]:
    nnunet_prepare(check, HIPPOCAMPUS)
    warmup, timed = (2, 3) if check.args.smoke else (30, 100)
    _, out = check.nnunet(NNUNET_TRAIN_SNIPPET, HIPPOCAMPUS, check.args.device, str(warmup), str(timed))
    return json.loads(out.strip().splitlines()[-1])


def nnunet_predict(check: Check, inputs: Path, dataset: str, extra: list[str]) -> dict[str, Any]:
    output = check.work / f"nnunet_pred_{dataset}"
    seconds, _ = check.nnunet(NNUNET_PREDICT_SNIPPET, "-i", str(inputs), "-o", str(output), "-d", str(DATASET_IDS[dataset]),
                              "-c", CONFIG, "-f", "0", "-device", check.args.device, *extra)
    cases = len(list(output.glob("*.nii.gz")))
    return {"seconds": seconds, "cases": cases, "tta": "--disable_tta" not in extra}


def nnunet_random_model(check: Check, dataset: str) -> None:
    """nnU-Net's model folder for ``dataset`` with random weights (prediction time does not depend on them)."""
    from bench_predict import NNUNET_MODEL_SNIPPET

    folder = check.work / "nnunet_results" / dataset / f"nnUNetTrainer__nnUNetPlans__{CONFIG}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(check.bundle / "nnunet" / dataset / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy2(check.raw / dataset / "dataset.json", folder / "dataset.json")
    check.nnunet(NNUNET_MODEL_SNIPPET, str(folder), CONFIG, "0", json.dumps([0, 1, 2]))


def autoseg_prepare(check: Check, dataset: str) -> None:
    target = check.work / "autoseg_pre" / dataset
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(check.bundle / "fingerprints" / f"{dataset}.json", target / "fingerprint.json")


def autoseg_plan(check: Check, dataset: str, plans_name: str, gpu_memory: str | None) -> dict[str, Any]:
    """Plan (for the whole GPU, or for ``gpu_memory`` GB), preprocess; the configuration's key facts."""
    memory = ["--gpu-memory", str(gpu_memory)] if gpu_memory else []
    check.autoseg("plan", dataset, "-c", CONFIG, "--plans-name", plans_name, "--device", check.args.device, *memory)
    check.autoseg("preprocess", dataset, "-c", CONFIG, "--plans-name", plans_name, "-np", check.workers)
    plans = json.loads((check.work / "autoseg_pre" / dataset / f"{plans_name}.json").read_text())
    config = plans["configurations"][CONFIG]
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"],
            "predicted_memory_bytes": config.get("predicted_memory_bytes"),
            "features": config["network"]["topology"].get("features_per_stage"), "budget": plans.get("budget")}


def autoseg_nnunet_plan(check: Check) -> dict[str, Any]:
    """nnU-Net's own Dataset004 3d_fullres plan (network, patch, batch, spacing) as an autoseg plans file."""
    from bench_predict import autoseg_plans

    nnunet_plans = json.loads((check.bundle / "nnunet" / HIPPOCAMPUS / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((check.raw / HIPPOCAMPUS / "dataset.json").read_text())
    plans = autoseg_plans(nnunet_plans, dataset_json)
    plans["plans_name"] = PLANS_NNUNET
    target = check.work / "autoseg_pre" / HIPPOCAMPUS / f"{PLANS_NNUNET}.json"
    target.write_text(json.dumps(plans, indent=1))
    check.autoseg("preprocess", HIPPOCAMPUS, "-c", CONFIG, "--plans-name", PLANS_NNUNET, "-np", check.workers)
    config = plans["configurations"][CONFIG]
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"]}


def autoseg_train(check: Check, dataset: str, plans_name: str, epochs: int, iterations: int,
                  extra: list[str] | None = None, launcher: list[str] | None = None) -> dict[str, Any]:
    """``autoseg train DATASET 3d_fullres all`` for a few short epochs; speed and peak memory per epoch.

    Fold ``all`` has no final validation, so the wall time is training (and its start-up) only.
    Iterations per second come from the trainer's per-epoch timing of its warm iterations.
    """
    command = ["train", dataset, CONFIG, "all", "--plans-name", plans_name, "--device", check.args.device,
               "--epochs", str(epochs), "--set", f"iterations_per_epoch={iterations}", "--set", "val_iterations_per_epoch=1",
               *(extra or [])]
    if launcher:
        seconds, _ = check.run([*launcher, "-m", "autoseg", *command], check.autoseg_env(), 900)
    else:
        seconds, _ = check.autoseg(*command)
    results = check.work / "autoseg_results" / dataset
    metrics = next(results.glob(f"*__{plans_name}__{CONFIG}/fold_all/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last = rows[-1]
    return {
        "wall_seconds": seconds, "epochs": len(rows),
        "iterations_per_second": 1.0 / last["seconds_per_iteration"] if last.get("seconds_per_iteration") else None,
        "peak_memory_bytes": max((r.get("peak_memory_bytes") or 0) for r in rows) or None,
        "model": str(metrics.parent.parent),
    }


def autoseg_predict(check: Check, inputs: Path, model: str, tag: str, extra: list[str]) -> dict[str, Any]:
    output = check.work / f"autoseg_pred_{tag}"
    seconds, _ = check.autoseg("predict", "-i", str(inputs), "-o", str(output), "-m", model, "-f", "all",
                               "--device", check.args.device, *extra)
    return {"seconds": seconds, "cases": len(list(output.glob("*.nii.gz"))), "tta": "--no-tta" not in extra}


def brats_prediction(check: Check, smoke: bool, finish: bool = True) -> int:
    """Step 3's BraTS case: nnU-Net (its model with random weights) and autoseg (its whole-GPU BraTS
    model, trained in step 2), TTA on; with ``finish`` the run's results are closed here."""
    steps = check.results["steps"]
    brats_inputs = check.work / "brats_input"
    brats_inputs.mkdir(exist_ok=True)
    for image in (check.raw / BRATS / "imagesTr").iterdir():
        (brats_inputs / image.name).symlink_to(image)
    brats_model = (steps.get(f"autoseg_train_brats2015mini_{PLANS_GPU}") or {}).get("result") or {}
    no_tta = ["--no-tta"] if smoke else []

    def autoseg_row(compiled: bool) -> None:
        tag = "compile" if compiled else "eager"
        if brats_model.get("model"):
            flag = ["--compile", *no_tta] if compiled else no_tta
            check.step(f"autoseg_predict_brats_{tag}",
                       lambda: autoseg_predict(check, brats_inputs, brats_model["model"], f"brats_{tag}", flag))

    # The order a deadline cuts from the end: both eager rows, then the compiled one.
    autoseg_row(compiled=False)
    check.step("nnunet_model_brats", lambda: nnunet_random_model(check, BRATS))
    tta = ["--disable_tta"] if smoke else []
    check.step("nnunet_predict_brats", lambda: nnunet_predict(check, brats_inputs, BRATS, tta))
    autoseg_row(compiled=True)
    if finish:
        return finish_run(check)
    return 0


def finish_run(check: Check) -> int:
    check.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    check.save()
    failed = [k for k, v in check.results["steps"].items() if not v["ok"] and not v.get("skipped")]
    print(f"gpu check finished: {len(failed)} failed step(s) {failed}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=HERE.parent / ".gpu_bundle")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (--smoke test of the script)")
    parser.add_argument("--nnunet-python", default=sys.executable, help="the Python that imports nnunetv2")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: tests the script, measures nothing")
    parser.add_argument("--deadline-seconds", type=float, default=480, help="start no step after this many seconds")
    parser.add_argument("--brats-prediction-only", action="store_true",
                        help="step 3's BraTS case alone (a BraTS model trained for one iteration first): for a second, "
                             "short lease when the full check ran out of time before it")
    args = parser.parse_args()
    check = Check(args)
    smoke = args.smoke
    info = check.step("environment", lambda: environment(check))
    whole_gpu = None if args.device == "cuda" else "8"  # None: the planner reads the GPU's memory
    if args.brats_prediction_only:
        autoseg_prepare(check, BRATS)
        check.step(f"autoseg_plan_brats2015mini_{PLANS_GPU}", lambda: autoseg_plan(check, BRATS, PLANS_GPU, whole_gpu))
        check.step(f"autoseg_train_brats2015mini_{PLANS_GPU}", lambda: autoseg_train(check, BRATS, PLANS_GPU, 1, 1))
        return brats_prediction(check, smoke)
    val_cases = check.manifest["hippocampus_fold0_validation"][: 2 if smoke else None]
    val_folder = validation_folder(check, val_cases)
    iterations, epochs = (3, 2) if smoke else (60, 3)

    # 1. training speed: nnU-Net's plan in nnU-Net, the same plan in autoseg, autoseg's own plans.
    check.step("nnunet_train_hippocampus", lambda: nnunet_train(check))
    for dataset in (HIPPOCAMPUS, ACDC, BRATS):
        autoseg_prepare(check, dataset)
    check.step("autoseg_plan_nnunet_hippocampus", lambda: autoseg_nnunet_plan(check))
    check.step("autoseg_train_nnunet_plan_hippocampus",
               lambda: autoseg_train(check, HIPPOCAMPUS, PLANS_NNUNET, epochs, iterations))
    # 2. memory (and speed on Dataset004) of autoseg's plans for the whole GPU and for 8 GB.
    for dataset in (HIPPOCAMPUS, ACDC, BRATS):
        short = dataset.split("_")[1].lower()
        for plans_name, memory in ((PLANS_GPU, whole_gpu), (PLANS_8GB, "8")):
            tag = f"{short}_{plans_name}"
            check.step(f"autoseg_plan_{tag}", lambda d=dataset, p=plans_name, m=memory: autoseg_plan(check, d, p, m))
            n = iterations if dataset == HIPPOCAMPUS else (1 if smoke else 3)
            e = (2 if dataset == HIPPOCAMPUS else 1) if smoke else epochs
            check.step(f"autoseg_train_{tag}", lambda d=dataset, p=plans_name, n=n, e=e: autoseg_train(check, d, p, e, n))
    # 3. prediction with TTA: Dataset004's 42 validation cases and one BraTS case.
    steps = check.results["steps"]
    check.step("nnunet_predict_hippocampus", lambda: nnunet_predict(check, val_folder, HIPPOCAMPUS, ["-chk", "checkpoint_final.pth"]))
    hippocampus_model = (steps.get("autoseg_train_nnunet_plan_hippocampus") or {}).get("result") or {}
    for compiled in (False, True):
        flag = ["--compile"] if compiled else []
        tag = "compile" if compiled else "eager"
        if hippocampus_model.get("model"):
            check.step(f"autoseg_predict_hippocampus_nnunet_plan_{tag}",
                       lambda f=flag, t=tag: autoseg_predict(check, val_folder, hippocampus_model["model"], f"hippo_{t}", f))
    brats_prediction(check, smoke, finish=False)
    # 4. DDP on two GPUs.
    if (info or {}).get("cuda_devices", 0) >= 2:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        check.step("autoseg_train_ddp_hippocampus",
                   lambda: autoseg_train(check, HIPPOCAMPUS, PLANS_GPU, epochs, iterations, launcher=torchrun))
    else:
        check.results["steps"]["autoseg_train_ddp_hippocampus"] = {
            "ok": False, "skipped": True, "error": f"not run: the machine has {(info or {}).get('cuda_devices', 0)} GPU(s), DDP needs 2"}
    return finish_run(check)


if __name__ == "__main__":
    sys.exit(main())
