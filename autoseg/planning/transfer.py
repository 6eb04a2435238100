"""``autoseg plan TARGET --transfer-plans-from SOURCE``: plan a dataset for fine-tuning another's model.

nnU-Net's ``nnUNetv2_move_plans_between_datasets`` copies the source plans wholesale, so the target is
preprocessed with the source's spacing and the source's CT intensity statistics. Here the target is
planned as usual (its own spacing, normalization, intensity statistics, schedule) and only what the
pretrained weights depend on is taken from the source, per configuration both plans have: the network
(family, topology, options, width), the patch and the batch size, with the source's memory model,
predicted memory and iteration time (they follow from those); the schedule is refitted to the target's
time budget, and the training settings (planning/short_schedule.py) follow the source's family and the
refitted schedule. ``transferred_from`` in the plans file records the source.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Collection, Sequence

from autoseg.errors import NetworkError, PlanError
from autoseg.paths import MODEL_FOLDER_NAME, check_model_folder_name, model_folder_parts
from autoseg.networks import get_network_spec
from autoseg.planning import accounting as A
from autoseg.planning import compute_budget as T
from autoseg.planning import constants as C
from autoseg.planning import short_schedule
from autoseg.planning.plans import load_plans, validate_plans

TRANSFERRED_KEYS = ("network", "width", "patch_size", "batch_size", "memory_model", "predicted_memory_bytes",
                    "predicted_seconds_per_iteration", "recipe_seconds_per_iteration")


def source_plans_file(source: str | Path) -> Path:
    """A plans JSON file (or a model zip), or a model folder's ``plans.json``."""
    path = Path(source)
    path = path / "plans.json" if path.is_dir() else path
    if not path.is_file():
        raise PlanError(f"{path}: not found; --transfer-plans-from takes a plans file, a trained model folder (holding plans.json) or a model zip")
    return path


def transfer_plans(target: dict[str, Any], source: dict[str, Any], source_name: str,
                   source_notes: Sequence[str] = ()) -> dict[str, Any]:
    """``target`` with each shared configuration's network, patch and batch taken from ``source``;
    configurations the source lacks are dropped (there are no weights to start them from). ``source_notes``
    (``read_source_plans``: what a model folder holds no weights for) are added to the plan's notes."""
    _check_channels(target, source, source_name)
    plans = copy.deepcopy(target)
    plans["notes"] = _notes_on_no_configuration(target)
    shared = [name for name in target["configurations"] if name in source["configurations"]]
    if not shared:
        advice = _no_shared_advice(_dimensionalities(target), source)
        raise PlanError(
            f"{source_name}: has configurations {', '.join(source['configurations'])}, the target plans "
            f"{', '.join(target['configurations'])}; none in common to transfer ({advice})"
        )
    configurations = {}
    for name in _without_unfitting_cascade(shared, plans, source, source_name):
        config, donor = plans["configurations"][name], source["configurations"][name]
        if donor["spatial_dims"] != config["spatial_dims"]:
            raise PlanError(f"{source_name}: configuration {name!r} is {donor['spatial_dims']}-D in the source, {config['spatial_dims']}-D here; transfer between datasets of the same dimensionality")
        _check_family(donor, name, source_name)
        config.update({key: copy.deepcopy(donor[key]) for key in TRANSFERRED_KEYS if key in donor})
        budget, seconds = (plans.get("budget") or {}).get("seconds"), config["predicted_seconds_per_iteration"]
        parts = config.get("predicted_seconds")
        if budget and seconds and parts:  # the target's time budget, at the source network's speed
            # a source planned without a budget, or before the recipe step was stored: its measured step
            config["recipe_seconds_per_iteration"] = donor.get("recipe_seconds_per_iteration") or seconds
            _refit_schedule(config, budget, seconds, config["recipe_seconds_per_iteration"], parts)
        configurations[name] = config
    _replan_training(plans, configurations)
    for config in configurations.values():  # a stage whose partner was dropped stands alone
        for link in ("previous_stage", "next_stage"):
            if config[link] not in configurations:
                config[link] = None
    plans["configurations"] = {n: c for n, c in configurations.items() if not (n.startswith("3d_cascade") and c["previous_stage"] is None)}
    _note_transfer(plans, target, source, source_name)
    plans["notes"] += source_notes
    plans["transferred_from"] = {
        "plans": source_name, "dataset_name": source.get("dataset_name"), "plans_name": source.get("plans_name"),
        "configurations": sorted(plans["configurations"]), "keys": list(TRANSFERRED_KEYS),
    }
    return plans


def _no_shared_advice(target_dims: set[int], source: dict[str, Any]) -> str:
    """What to do when no configuration is shared with a target of these spatial dimensionalities. '-c 3d_fullres'
    alone sent the user of a 2D dataset (one slice per case), whose plan holds only 2d, to a plan that refuses
    3D configurations there."""
    advice = f"plan the target with -c {next(iter(source['configurations']))}"
    if target_dims == {2} and 2 not in _dimensionalities(source):
        advice += " if its cases are volumes; a 2D dataset (one slice per case) needs a source with a 2d configuration"
    return advice


def _dimensionalities(plans: dict[str, Any]) -> set[int]:
    """The spatial dimensionalities of the plans' configurations (2, 3)."""
    return {int(c["spatial_dims"]) for c in plans["configurations"].values()}


def _notes_on_no_configuration(target: dict[str, Any]) -> list[str]:
    """The target's notes less those on one of its configurations ('2d: ... (patch [18, 12]: 1458
    iterations)'): each is transferred or dropped, so they described a patch, batch or schedule the plan no
    longer holds (``_note_transfer`` says what it holds)."""
    prefixes = tuple(f"{name}: " for name in target["configurations"])
    return [note for note in target.get("notes", []) if not (prefixes and note.startswith(prefixes))]


def _note_transfer(plans: dict[str, Any], target: dict[str, Any], source: dict[str, Any], source_name: str) -> None:
    """A note per configuration on what the plan holds for it: transferred (the source's patch and batch at
    this dataset's spacing), or not transferred as the source has none (a 3D target from a 2D-only source
    lost 3d_fullres without a word)."""
    for name, config in plans["configurations"].items():
        spacing = config["spacing"][len(config["spacing"]) - config["spatial_dims"]:]
        iterations = f"; {config['num_iterations']} iterations" if config.get("num_iterations") else ""
        plans["notes"].append(
            f"{name}: transferred from {source_name}: its network {config['network']['name']!r}, patch "
            f"{config['patch_size']} and batch {config['batch_size']}, at this dataset's spacing "
            f"{'x'.join(f'{v:.3g}' for v in spacing)} mm{iterations}")
    plans["notes"] += [
        f"{name}: not transferred: {source_name} has no {name} to start it from; plan it without --transfer-plans-from"
        for name in target["configurations"] if name not in plans["configurations"] and name not in source["configurations"]
    ]


def _check_channels(target: dict[str, Any], source: dict[str, Any], source_name: str) -> None:
    """The source's network takes its dataset's channels: another number of them was planned without a word
    and only ``train --pretrained-weights`` refused the weights, after preprocessing."""
    mine, theirs = target.get("channel_names") or {}, source.get("channel_names")
    if not isinstance(theirs, dict) or len(theirs) == len(mine):
        return
    raise PlanError(
        f"{source_name}: its dataset {source.get('dataset_name') or '(unnamed)'} has {len(theirs)} input channel(s) "
        f"({_listed(theirs)}), {target.get('dataset_name')} has {len(mine)} ({_listed(mine)}); pretrained weights need "
        "the same input channels: transfer from a model trained on this dataset's channels, or plan without "
        "--transfer-plans-from"
    )


def _listed(channel_names: dict[str, Any]) -> str:
    """Channel names as the refusals show them: '0: FLAIR, 1: T1w'."""
    return ", ".join(f"{k}: {v}" for k, v in channel_names.items())


def _without_unfitting_cascade(shared: list[str], plans: dict[str, Any], source: dict[str, Any], source_name: str) -> list[str]:
    """``shared`` less a cascade stage whose input the source had other foreground labels for: the stage takes
    the previous stage's labels as one-hot input channels, so its stem would not fit the source's weights
    (train --pretrained-weights refused them as "another number of input channels", naming channel_names).
    The plan notes it; fine-tuning to other classes keeps every other configuration."""
    from autoseg.planning.context import output_channels

    theirs, mine = output_channels(source.get("labels") or {})[1], output_channels(plans["labels"])[1]
    dropped = [n for n in shared if plans["configurations"][n].get("previous_stage") and theirs != mine]
    for name in dropped:
        plans.setdefault("notes", []).append(
            f"{name}: not transferred from {source_name}: its input holds the previous stage's {theirs} foreground "
            f"label(s) there, {mine} here, so the source's weights do not fit it; train it without --pretrained-weights "
            "(plan it without --transfer-plans-from)")
    if dropped and len(dropped) == len(shared):
        raise PlanError(f"{source_name}: {plans['notes'][-1]}; plan 3d_fullres (-c 3d_fullres) to fine-tune from it")
    return [n for n in shared if n not in dropped]


def _check_family(donor: dict[str, Any], name: str, source_name: str) -> None:
    """The source's network must be a registered family: an unknown name was copied into the target's plans
    unchecked and only training refused it, without naming the file it came from."""
    network = donor["network"].get("name") if isinstance(donor["network"], dict) else None
    try:
        get_network_spec(network)  # type: ignore[arg-type]
    except NetworkError as exc:
        raise PlanError(f"{source_name}: configuration {name!r}: {exc}; transfer from a plans file autoseg wrote") from None


def _replan_training(plans: dict[str, Any], configurations: dict[str, dict[str, Any]]) -> None:
    """Each configuration's training settings for the source's family and the refitted schedule, noted
    (the target's own notes on them are gone: ``_notes_on_no_configuration``)."""
    plans["notes"] += short_schedule.apply(configurations, (plans.get("budget") or {}).get("seconds"))


def _refit_schedule(config: dict[str, Any], budget: float, seconds: float, recipe_seconds: float,
                    parts: dict[str, float]) -> None:
    """Training iterations for what the target plan's other parts (preprocessing, validation and
    checkpoint costs, as predicted for the target) leave of its budget, at the source network's
    measured speed, and at its recipe speed (``recipe_iterations``, which the training settings follow)."""
    per_checkpoint = parts["checkpoints"] / A.checkpoint_files(config["num_iterations"], config["iterations_per_epoch"])
    step = seconds * C.VALIDATION_COST_FACTOR
    def split(step_seconds: float) -> int:
        """The iterations the budget leaves at this many seconds a step."""
        return A.split_budget(budget, parts["preprocess"], parts["final_validation"], step_seconds, per_checkpoint)[0]

    iterations, config["recipe_iterations"] = split(step), split(recipe_seconds * C.VALIDATION_COST_FACTOR)
    config["num_iterations"], config["iterations_per_epoch"] = T.schedule(iterations)
    refit = A.parts_for(config["num_iterations"], parts["preprocess"], parts["final_validation"], step, per_checkpoint,
                        config["iterations_per_epoch"])
    config["predicted_seconds"], config["predicted_total_seconds"] = refit.to_dict(), round(refit.total, 1)


def read_source_plans(source: str | Path) -> tuple[dict[str, Any], str, list[str]]:
    """The plans of a plans file, a trained model folder or a model zip from export-model, the name
    that cites them, and notes on what a model holds no weights for (``transfer_plans``' ``source_notes``)."""
    path = source_plans_file(source)
    with path.open("rb") as handle:
        zipped = handle.read(2) == b"PK"  # a cut-short zip too: import-model's checks name its damage
    if zipped:
        return _zip_plans(path)
    plans = load_plans(path)
    if not Path(source).is_dir():
        return plans, str(path), []
    model = model_folder_parts(Path(source).name)
    if model is None:  # its plans of one configuration leave no doubt
        return plans, str(path), [_unnamed_model_note(Path(source), plans)] if len(plans["configurations"]) > 1 else []
    kept, notes = _model_configurations(plans, model[2], str(path))
    return kept, str(path), notes


def _unnamed_model_note(folder: Path, plans: dict[str, Any]) -> str:
    """A model folder renamed away from its pattern tells no configuration: every one of its plans.json is
    transferred, though its weights fit one only (the others train from nothing with --pretrained-weights)."""
    names = ", ".join(_model_folder(plans, n) for n in plans["configurations"])
    return (f"{folder}: its name is not {MODEL_FOLDER_NAME}, so the configuration its weights are for is unknown and "
            "every configuration of its plans.json that this dataset plans was transferred; only the one it was "
            f"trained for fits its weights: give the folder its name back (one of {names}) or plan that configuration "
            "alone (-c)")


def _model_configurations(plans: dict[str, Any], configuration: str, source_name: str) -> tuple[dict[str, Any], list[str]]:
    """The plans of one trained model: its own configuration (and a cascade stage's previous stages,
    which it cannot run without), and a note on each previous stage, whose weights lie in its own folder.
    A model folder's plans.json holds every configuration of its plans, but weights only for the folder's:
    a 3d_fullres model transferred a 2d plan too, which ``train --pretrained-weights`` then started from
    nothing (no 2D tensor fits)."""
    configurations = plans["configurations"]
    if configuration not in configurations:
        raise PlanError(f"{source_name}: its model folder is named for {configuration!r}, which the plans lack "
                        f"(they hold {', '.join(configurations)}); give the model folder that was trained")
    kept, name = {}, configuration
    while name is not None and name in configurations and name not in kept:
        kept[name] = configurations[name]
        name = configurations[name].get("previous_stage")
    notes = [f"{stage}: transferred from {source_name} only as {configuration}'s previous stage: that model holds no "
             f"weights for {stage} (its own model, {_model_folder(plans, stage)}, does); train {stage} with "
             "--pretrained-weights from that model, or without them" for stage in kept if stage != configuration]
    return {**plans, "configurations": {n: c for n, c in configurations.items() if n in kept}}, notes


def _model_folder(plans: dict[str, Any], configuration: str) -> str:
    """The name of the model folder ``train`` writes for one configuration of ``plans`` (MODEL_FOLDER_NAME)."""
    network = plans["configurations"][configuration].get("network")
    name = network.get("name") if isinstance(network, dict) else None
    return f"{name or '<network>'}__{plans.get('plans_name') or '<plans>'}__{configuration}"


def fitting_source_plans(dataset_name: str, channel_names: dict[str, str], source: str | Path,
                         plannable: Collection[str] | None) -> tuple[dict[str, Any], str, list[str]]:
    """``read_source_plans``, refused when the source's channels do not fit the target dataset's, or when it
    has none of the configurations the target can plan (``plannable``: those asked for with -c that the
    network family builds; None: not known before the fingerprint): checked before planning, whose
    fingerprint and timing probe took ~20 s before the refusal came."""
    plans, name, notes = read_source_plans(source)
    _check_channels({"dataset_name": dataset_name, "channel_names": channel_names}, plans, name)
    if plannable is not None:
        refuse_without_shared(plans, name, plannable)
    return plans, name, notes


def refuse_without_shared(source: dict[str, Any], source_name: str, plannable: Collection[str]) -> None:
    """Refuse a source with none of the configurations the target can plan, before any costly step: the
    same refusal ``transfer_plans`` gives once the target is planned."""
    if set(source["configurations"]) & set(plannable):
        return
    dims = {2 if name == "2d" else 3 for name in plannable}
    raise PlanError(
        f"{source_name}: has configurations {', '.join(source['configurations'])}, the target can plan only "
        f"{', '.join(sorted(plannable))}; none in common to transfer ({_no_shared_advice(dims, source)})"
    )


def _zip_plans(path: Path) -> tuple[dict[str, Any], str, list[str]]:
    """The plans of the one model a model zip holds, checked as import-model checks it: ``--pretrained-weights``
    takes such a zip, and ``--transfer-plans-from`` read it as a broken JSON file ("re-run autoseg plan")."""
    from autoseg.evaluation.model_files import validate_model_file

    manifest, members = validate_model_file(path)
    models = list(manifest["models"])
    if len(models) != 1:
        raise PlanError(f"{path}: holds {len(models)} models ({', '.join(models)}); install it with autoseg import-model "
                        "and give the model folder to transfer from")
    name = f"{path}:{models[0]}/plans.json"
    plans = validate_plans(json.loads(members[f"{models[0]}/plans.json"]), name)
    configuration = check_model_folder_name(models[0], name, PlanError, "export it again")[2]
    kept, notes = _model_configurations(plans, configuration, name)
    return kept, name, notes
