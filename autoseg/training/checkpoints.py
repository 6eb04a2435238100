"""Checkpoints: written atomically, loaded without pickle, holding everything an exact resume needs.

reference.md §1.5 / §3: nnU-Net saves every 50 epochs straight to the final name and loads with pickle.
Here a checkpoint is written every epoch to a temporary name and renamed, so ``kill -9`` at any moment
leaves the previous complete file; its format (names, version, checks) is autoseg/utils/checkpoint_format.py,
shared with inference and model files: tensors and JSON-able values only, so RNG states are converted
to tensors and lists here.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from autoseg.errors import TrainingError
from autoseg.inference.model import (
    check_fold_of_model,
    listed_differences,
    plan_differences,
    prediction_plan_differences,
)
from autoseg.training.model_setup import ModelSetup
from autoseg.training.schedule import TrainingState
from autoseg.utils.checkpoint_format import (
    CHECKPOINT_FORMAT_VERSION,
    check_checkpoint,
    checkpoint_name,
    first_mismatch,
    read_checkpoint,
)
from autoseg.utils.weights_file import load_weights_skeleton, weights_exist

LATEST = checkpoint_name("latest")
BEST = checkpoint_name("best")
FINAL = checkpoint_name("final")


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors / plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


CHECKPOINT_MISSING = "checkpoint not found; train first (without --continue) or check the fold"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint (no code runs from the file)."""
    return read_checkpoint(path, TrainingError, missing=CHECKPOINT_MISSING, fix=damaged_checkpoint_fix(path),
                           device=map_location)


def damaged_checkpoint_fix(path: Path) -> str:
    """What to do about a damaged checkpoint: deleting it restarts the fold only while no final model lies
    beside it; with ``checkpoint_final`` there, ``--continue`` then refuses a final model without training
    state, so "delete it to restart the fold" sent the user into that refusal. With ``checkpoint_best`` beside a
    damaged latest, a fresh start is refused and --continue resumes from the best: "train the fold from the start"
    was neither."""
    final = path.parent / FINAL
    if path.name != FINAL and final.is_file():
        return (f"the fold's {FINAL} is kept for prediction, but without a readable {path.name} the fold cannot be "
                f"continued or extended: delete the folder {path.parent} to train the fold again")
    if path.name == LATEST and (path.parent / BEST).is_file():  # a fresh start is refused beside it, --continue takes it
        return f"delete it: --continue then resumes from the fold's {BEST} (the epochs after it are trained again)"
    return "delete it to train the fold from the start"


def training_checkpoint(setup: ModelSetup, step_state: dict[str, Any], state: TrainingState,
                        metadata: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict of a training run: what inference needs (weights, metadata) and what an
    exact resume needs (optimiser, grad scaler and step extras, RNG states, ``TrainingState``)."""
    step_state = dict(step_state)
    return {
        "network_weights": setup.network.state_dict(),
        "optimizer_state": setup.optimizer.state_dict(),
        "grad_scaler_state": step_state.pop("grad_scaler"),
        "extra_state": step_state,
        "rng_state": capture_rng_state(),
        "trainer_state": state.to_dict(),
        "metadata": {"format_version": CHECKPOINT_FORMAT_VERSION, **metadata},
    }


def split_digest(train_cases: Sequence[str], val_cases: Sequence[str]) -> str:
    """A fold's training and validation cases, hashed: checkpoints record it so that a run continues on the
    split it was trained on."""
    return hashlib.sha256(json.dumps([sorted(train_cases), sorted(val_cases)]).encode()).hexdigest()


def restore_training_checkpoint(path: Path, setup: ModelSetup, step: Any, network: str, configuration: str,
                                optimizer: str, device: torch.device, fold: str | None = None,
                                split: str | None = None, model_name: str | None = None) -> TrainingState:
    """Load ``path`` into the network, optimiser, step and RNGs; returns where the run stood. The run
    must continue as it was trained: the same fold, plans, network, configuration and optimiser (another
    optimiser's state would not fit, or would load silently into the wrong slots; another fold's
    checkpoint, copied over, resumed a model that had trained on this fold's validation cases). ``model_name``, the
    model folder's name, refuses a checkpoint copied from another plans' folder, which predict refuses too."""
    checkpoint = load_checkpoint(path, map_location=device)
    meta = checkpoint["metadata"]
    _refuse_weights_only(path, checkpoint)
    if fold is not None and meta.get("fold") is not None and str(meta["fold"]) != str(fold):
        raise TrainingError(
            f"{path}: is the checkpoint of fold {meta['fold']}, not of fold {fold} (copied from another fold?): it has "
            "trained on cases this fold validates on; put this fold's own checkpoint back, or delete the fold folder "
            "to start over"
        )
    if split is not None and meta.get("split_sha256") is not None and meta["split_sha256"] != split:
        raise TrainingError(
            f"{path}: was trained on another split of the cases than the split file now gives fold {fold} (was "
            "splits_final.json edited?): continuing would validate on cases the model trained on; restore the split "
            "file, or delete the fold folder to train this fold on the new split"
        )
    if meta.get("network") != network or meta.get("configuration") != configuration:
        raise TrainingError(
            f"{path}: was trained as {meta.get('network')}/{meta.get('configuration')}, not "
            f"{network}/{configuration}; use another results folder or drop --continue"
        )
    if model_name is not None:
        check_fold_of_model(meta, model_name, path, TrainingError)
    _refuse_another_network(path, meta, setup)
    trained_with = meta.get("optimizer")  # absent in checkpoints written before it was recorded
    if trained_with is not None and trained_with != optimizer:
        raise TrainingError(
            f"{path}: was trained with optimizer.name={trained_with}, this run sets {optimizer}; an optimiser "
            f"cannot take over another's state: continue with --set optimizer.name={trained_with} (or without "
            "that --set), or delete the fold folder to start over"
        )
    try:
        setup.network.load_state_dict(checkpoint["network_weights"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(
            f"{path}: does not fit this network ({first_mismatch(exc)}): the plan's network or the network "
            "options changed since the fold was trained; continue with the plan and --set network_options the fold "
            "was trained with (its model folder's plans.json and training_config.yaml), or delete the fold folder to start over"
        ) from exc
    try:
        setup.optimizer.load_state_dict(checkpoint["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(
            f"{path}: its optimiser state does not fit optimizer {optimizer!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'missing entry'}); continue with the optimizer settings the "
            "fold was trained with (its training_config.yaml), or delete the fold folder to start over"
        ) from exc
    step.load_state_dict({"grad_scaler": checkpoint.get("grad_scaler_state"), **checkpoint.get("extra_state", {})})
    restore_rng_state(checkpoint["rng_state"])
    return TrainingState.from_dict(checkpoint["trainer_state"])


# What a training checkpoint holds beyond the network weights and metadata every checkpoint has.
TRAINING_STATE_KEYS = ("optimizer_state", "rng_state", "trainer_state")


def _refuse_weights_only(path: Path, checkpoint: dict[str, Any]) -> None:
    """A checkpoint of network weights alone (an exported or imported model's, put in as ``checkpoint_latest``) was
    refused as an optimiser state that 'does not fit' the optimizer settings, sending the user to change them."""
    missing = [key for key in TRAINING_STATE_KEYS if key not in checkpoint]
    if missing:
        raise TrainingError(
            f"{path}: holds network weights only, no training state ({', '.join(missing)}): the checkpoint of an "
            "exported or imported model, which cannot be continued; put the fold's own checkpoint back, or fine-tune "
            "from it in a new fold or results folder (--pretrained-weights, without --continue)"
        )


def _network_definition(patch_size: Any, topology: dict[str, Any]) -> dict[str, Any]:
    """What defines a fold's network structure beyond its family, as JSON holds it (a checkpoint's metadata is JSON).
    Network options are left out: one that changes no shape (dropout, deep supervision) loads with
    ``_warn_changed_settings``' warning, and one that does is refused by the state dict's shapes."""
    extra = {k: v for k, v in (topology.get("extra") or {}).items() if k != "patch_size"}
    parts = {"patch_size": patch_size, **{f"topology.{k}": v for k, v in topology.items() if k != "extra"},
             **{f"topology.extra.{k}": v for k, v in extra.items()}}
    return json.loads(json.dumps(parts))


def _refuse_another_network(path: Path, meta: dict[str, Any], setup: ModelSetup) -> None:
    """A checkpoint of the same network and configuration made with another plan (copied from another results root,
    or the model re-planned and its plans.json replaced): another patch size loaded into the same weights without a
    word, and trained on patches the checkpoint never saw; another topology was refused only as a tensor that 'does
    not fit'. Every value that differs is named, the checkpoint's and this run's (older checkpoints lack some)."""
    if not isinstance(meta.get("topology"), dict):
        return
    recorded = _network_definition(meta.get("patch_size"), meta["topology"])
    before = {key: value for key, value in recorded.items() if value is not None}  # older checkpoints lack some
    now = _network_definition(setup.topology.get("extra", {}).get("patch_size"), setup.topology)
    if changed := plan_differences(before, now):
        _refuse_plan(path, listed_differences(changed))


def _refuse_plan(path: Path, differences: str) -> None:
    """The one refusal of a checkpoint to continue trained with another plan (``differences`` says how)."""
    raise TrainingError(
        f"{path}: was trained with another plan than this run's ({differences}): "
        "the fold comes from another results root or the model was re-planned; continue with the plan and --set "
        "the fold was trained with (the plans.json and training_config.yaml of the model folder it came from), "
        "or delete the fold folder to start over"
    )


def refuse_another_prediction_plan(path: Path, plans: Mapping[str, Any], configuration: str) -> None:
    """A checkpoint to continue must record this plan's grid (its ``prediction_plan``: spacing, transpose,
    normalization, resampling). With no plans.json beside the model folder to compare, a fold re-planned to another
    spacing (the same patch and network) went on training on another grid without a word. Older checkpoints pass.
    Only the metadata is read (every rank checks; ``_restore`` then loads the weights)."""
    if differences := prediction_plan_differences(checkpoint_metadata(path), plans, configuration):
        _refuse_plan(path, differences)


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """A training checkpoint's metadata, checked as ``load_checkpoint`` checks it, without reading its tensors
    (the weights and optimizer state: gigabytes for a large network)."""
    path = Path(path)
    if not weights_exist(path):
        raise TrainingError(f"{path}: {CHECKPOINT_MISSING}")
    fix = damaged_checkpoint_fix(path)
    checkpoint = load_weights_skeleton(path, lambda message: TrainingError(f"{message}; {fix}"))
    check_checkpoint(checkpoint, str(path), TrainingError, fix)
    return checkpoint["metadata"]
