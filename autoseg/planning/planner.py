"""``autoseg plan``: fingerprint -> plans file, under a memory budget and optionally a compute budget.

Order of decisions per configuration: spacing and transpose (rules.py), the largest patch whose
measured memory model fits the memory budget at batch 2 (reference §1.3's shrinking order), the
batch that fills the memory (capped at 5% of the dataset), then, under a compute budget, a joint
search over spacing, patch, depth and width: the finest spacing at which a recipe gives enough context
and iterations once data preparation, validation and checkpoints are paid (docs/planning.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from autoseg import __version__
from autoseg.dataset.imageio import NATURAL_2D_ENDINGS
from autoseg.errors import PlanError
from autoseg.networks import default_network, get_network_spec
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import mirroring, rules, short_schedule
from autoseg.planning.plans import format_plan_table, plans_path, write_plans
from autoseg.training.splits import NUM_FOLDS
from autoseg.utils.cpu_load import applied, idle_thread_choice
from autoseg.utils.duration import check_budget_seconds
from autoseg.utils.names import string_list
from autoseg.utils.shapes import single_slice_axis
from autoseg.planning.configuration import plan_3d, plan_configuration
from autoseg.planning.context import (
    ALL_CONFIGURATIONS, Bf16Check, CONFIG_2D, CONFIG_CASCADE, CONFIG_FULLRES, CONFIG_LOWRES, PlanningContext,
    TimingFactory, check_gpu_memory, memory_budget, planning_context, target_device,
)
from autoseg.planning.fingerprint_checks import check_fingerprint, check_resampled_sizes, fingerprint_digest

# The 3D configurations: -c 3d_lowres or the cascade plans all three (3d_fullres: the cascade's full-resolution stage).
CONFIGS_3D = (CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE)

if TYPE_CHECKING:
    from autoseg.dataset.description import DatasetDescription
    from autoseg.networks.registry import NetworkSpec
    from autoseg.paths import DatasetLocation, DatasetSpec


def build_plans(
    fingerprint: dict[str, Any],
    *,
    network: str | None = None,
    memory_budget_bytes: float,
    budget_seconds: float | None = None,
    device: torch.device | str = "cpu",
    configs: str | Sequence[str] | None = None,
    plans_name: str = C.DEFAULT_PLANS_NAME,
    regions_class_order: list[int] | None = None,
    cache_dir: Path | None = None,
    timing_factory: TimingFactory | None = None,
    bf16_check: Bf16Check | None = None,
    timed_thread_share: float = 1.0,
    budget_record: dict[str, Any] | None = None,
    source: str = "fingerprint",
    device_present: bool = True,
) -> dict[str, Any]:
    """The plans dict for a fingerprint (pure apart from timing, which ``timing_factory`` replaces).

    ``bf16_check`` replaces the child-process bf16 step of a budget-planned CPU recipe (run only where
    training would use bf16 on this CPU). ``timed_thread_share`` (CPU): the math threads timing runs
    with over the machine's, when other processes held cores; the recipe is chosen for all of them
    and only the iterations follow the threads timed.

    ``device_present=False`` plans for a device this machine lacks (``--gpu-memory`` without a GPU):
    memory is modelled as always, nothing is timed, and no compute budget can apply.
    """
    check_fingerprint(fingerprint, source)
    record = dict(budget_record or {}, memory_bytes_usable=int(memory_budget_bytes))
    ctx = planning_context(fingerprint, network or default_network(), memory_budget_bytes, budget_seconds,
                           torch.device(device), cache_dir, timing_factory, bf16_check, timed_thread_share, record,
                           device_present)
    target = rules.target_spacing(fingerprint["spacings"], fingerprint["shapes_after_crop"])
    check_resampled_sizes(fingerprint, target)
    forward, backward = rules.transpose_axes(target, first=single_slice_axis(fingerprint["shapes_after_crop"]))
    ctx.forward, ctx.fixed_orders = forward, mirroring.fixed_orders(fingerprint)
    configurations = _plan_wanted(ctx, fingerprint, [target[a] for a in forward], configs, plans_name)
    ctx.notes.extend(_flat_3d_patch_notes(configurations, budget_seconds))
    ctx.notes.extend(_too_few_cases_notes(len(fingerprint["spacings"])))
    ctx.notes.extend(short_schedule.apply(configurations, budget_seconds))
    ctx.notes.extend(mirroring.mirroring_notes(fingerprint, ctx.fixed_orders))
    return {
        "version": C.PLANS_VERSION,
        "plans_name": plans_name,
        "dataset_name": fingerprint["dataset_name"],
        "created_by": f"autoseg {__version__}",
        "fingerprint_sha256": fingerprint_digest(fingerprint),
        "channel_names": fingerprint["channel_names"],
        "labels": fingerprint["labels"],
        "regions_class_order": regions_class_order,
        "ignore_label": fingerprint["labels"].get("ignore"),
        "file_ending": fingerprint["file_ending"],
        "transpose_forward": forward,
        "transpose_backward": backward,
        "original_median_spacing": [float(s) for s in np.median(np.asarray(fingerprint["spacings"]), axis=0)],
        "target_spacing": target,
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
        "budget": dict(record, seconds=budget_seconds),
        "configurations": configurations,
        "notes": ctx.notes,
    }


def _plan_wanted(ctx: PlanningContext, fingerprint: dict[str, Any], spacing: list[float],
                 configs: str | Sequence[str] | None, plans_name: str) -> dict[str, dict[str, Any]]:
    """Each configuration asked for (``configs``; None: every one that applies), at the transposed
    target ``spacing``: 2d, then 3d_fullres with 3d_lowres and the cascade where they apply."""
    is_2d = dataset_is_2d(fingerprint)
    wanted = _wanted_configurations(configs, is_2d, ctx.constraints.spatial_dims, ctx)
    if is_2d and fingerprint.get("file_ending") not in NATURAL_2D_ENDINGS:
        # Volumes in a 3D format whose cases all hold one slice: why the table has no 3D row.
        ctx.notes.append(f"{CONFIG_FULLRES}: not planned, every case holds a single slice (after cropping): a 2D dataset")
    configurations: dict[str, dict[str, Any]] = {}
    if CONFIG_2D in wanted:
        configurations[CONFIG_2D] = plan_configuration(ctx, CONFIG_2D, spacing, 2, fingerprint, ctx.forward,
                                                       f"{plans_name}_{CONFIG_2D}")
    if wanted & set(CONFIGS_3D):
        configurations.update(plan_3d(ctx, wanted, spacing, ctx.forward, fingerprint, plans_name,
                                      explicit=configs is not None))
    return configurations


def _flat_3d_patch_notes(configurations: dict[str, dict[str, Any]], budget_seconds: float | None) -> list[str]:
    """A note per 3D configuration whose patch is one voxel thick (thin volumes, small budgets): its
    network sees no context across that axis, so it is a costlier 2D model, which the table alone hides."""
    notes = []
    for name, config in configurations.items():
        patch = config.get("patch_size") or []
        if len(patch) == 3 and 1 in patch:
            notes.append(
                f"{name}: its patch {patch} is one voxel thick, so the 3D network sees no context across that axis "
                f"and does what {CONFIG_2D} does at more cost; compare them by cross-validation (find-best)"
                f"{', or give a larger --budget' if budget_seconds else ''}"
            )
    return notes


def _too_few_cases_notes(cases: int) -> list[str]:
    """Why folds 0-4 of this plan cannot train: with fewer cases than folds ``autoseg train`` refuses them, and
    the plan gave no hint of it (nor of why its budget prices no final validation)."""
    if cases >= NUM_FOLDS:
        return []
    return [f"{cases} training case(s) cannot be split into {NUM_FOLDS} folds, so `autoseg train` refuses folds "
            f"0-{NUM_FOLDS - 1}: add cases, train fold 'all' (no final validation, so the plan reserves no time for "
            "one), or write splits_final.json with fewer folds into the dataset's preprocessed folder (training then "
            "keeps its final validation's time from the iterations)"]


def _checked_configs(configs: str | Sequence[str] | None) -> list[str] | None:
    """The configurations asked for (None: all that apply), refused when one is unknown."""
    if configs is not None:  # one name, not its letters ("unknown configuration(s) 3, _, d, ...")
        configs = string_list(configs)
    unknown = sorted(set(configs or ()) - set(ALL_CONFIGURATIONS))
    if unknown:
        raise PlanError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONFIGURATIONS)}")
    return configs


def plannable_configurations(configs: str | Sequence[str] | None, family_dims: tuple[int, ...], network: str,
                             is_2d: bool | None = None) -> set[str] | None:
    """The configurations a plan can hold at most: those asked for (all that apply without ``configs``) that
    the family builds for the dataset, with the cascade's other stages (-c 3d_lowres plans 3d_fullres too).
    Before the fingerprint tells the dataset's dimensionality (``is_2d`` None) only an explicit -c that the
    family builds decides; otherwise None (known once the fingerprint is read, refused then as planning
    refuses it)."""
    if is_2d is None:
        configs = _checked_configs(configs)
        if configs is None or not set(configs) <= _possible_configurations(family_dims, None):
            return None
        wanted = set(configs)
    else:
        wanted = _asked_and_possible(configs, is_2d, family_dims, network)
    return wanted | set(CONFIGS_3D) if wanted & {CONFIG_LOWRES, CONFIG_CASCADE} else wanted


def _possible_configurations(family_dims: tuple[int, ...], is_2d: bool | None) -> set[str]:
    """What the family's dimensionalities build and the dataset's (``is_2d``; None: not known yet) allows:
    2d is planned on volumes too, the 3D configurations on volumes only."""
    possible = set(ALL_CONFIGURATIONS)
    if 2 not in family_dims:
        possible.discard(CONFIG_2D)
    if 3 not in family_dims or is_2d:
        possible -= set(CONFIGS_3D)
    return possible


def dataset_is_2d(fingerprint: dict[str, Any]) -> bool:
    """A 2D dataset: 2D images, or volumes whose cases all hold one slice after cropping."""
    return bool(fingerprint["is_2d"]) or single_slice_axis(fingerprint["shapes_after_crop"]) is not None


def _wanted_configurations(configs: str | Sequence[str] | None, is_2d: bool, family_dims: tuple[int, ...],
                           ctx: PlanningContext) -> set[str]:
    """The configurations to plan, with a note when the family skips 2d."""
    if 2 not in family_dims:
        ctx.notes.append(f"{CONFIG_2D}: skipped, network {ctx.network!r} is 3D only")
    return _asked_and_possible(configs, is_2d, family_dims, ctx.network)


def _asked_and_possible(configs: str | Sequence[str] | None, is_2d: bool, family_dims: tuple[int, ...],
                        network: str) -> set[str]:
    """The configurations asked for (all that apply without ``configs``), refused when the family cannot
    build the dataset's dimensionality or one asked for cannot be planned for this dataset."""
    configs = _checked_configs(configs)
    possible = _possible_configurations(family_dims, is_2d)
    dims = "2D" if is_2d else "3D"
    if not possible:  # the family lacks the dataset's dimensionality: no -c choice can help
        raise PlanError(f"network {network!r} builds {'/'.join(f'{d}D' for d in family_dims)} networks only and this "
                        f"dataset is {dims}: nothing can be planned; choose a family with {dims} in `autoseg networks`")
    wanted = set(configs) if configs is not None else possible
    impossible = sorted(wanted - possible)
    if impossible or not wanted:
        raise PlanError(
            f"configuration(s) {', '.join(impossible) or '(none)'} cannot be planned for this {dims} dataset with "
            f"network {network!r}; possible: {', '.join(sorted(possible)) or 'none (choose another network)'}"
        )
    return wanted


def _print_warning(warning: str) -> None:
    """One warning of the fingerprint plan runs, on stderr beside the plan table as ``autoseg fingerprint`` prints it."""
    print(f"WARNING {warning}", file=sys.stderr, flush=True)


def plan_dataset(
    dataset_spec: DatasetSpec,
    gpu_memory_gb: float | None = None,
    budget_seconds: float | None = None,
    network: str | None = None,
    configs: str | Sequence[str] | None = None,
    plans_name: str = C.DEFAULT_PLANS_NAME,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    num_workers: int | None = None,
    transfer_from: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Plan a dataset and write ``<preprocessed>/<Dataset>/<plans_name>.json``; returns (plans, table).

    ``transfer_from`` (a plans file or model folder) keeps the source's network, patch and batch for
    fine-tuning its weights (``planning/transfer.py``).

    Fingerprints the dataset first when ``fingerprint.json`` is missing. With no GPU (or ``device``
    'cpu') the plan is sized for a compute budget (``budget_seconds``, default 12 h per fold), unless
    ``gpu_memory_gb`` asks for a GPU plan (see ``target_device``).
    """
    from autoseg.fingerprint.file import fingerprint_path

    spec, location, description, donor = _checked_request(dataset_spec, gpu_memory_gb, budget_seconds, network, configs,
                                                           plans_name, transfer_from)
    fingerprint = _dataset_fingerprint(location, num_workers)
    if donor is not None:  # a 2D dataset's plan holds 2d only: known before the timing probe
        from autoseg.planning.transfer import refuse_without_shared

        is_2d = dataset_is_2d(check_fingerprint(fingerprint, str(fingerprint_path(location))))
        refuse_without_shared(donor[0], donor[1],
                              plannable_configurations(configs, spec.constraints.spatial_dims, spec.name, is_2d))
    chosen, present = target_device(device, gpu_memory_gb, budget_seconds)
    usable, nominal = memory_budget(chosen, gpu_memory_gb)
    if budget_seconds is None and chosen.type == "cpu":
        budget_seconds = C.DEFAULT_CPU_BUDGET_SECONDS

    def plan(timed_thread_share: float) -> dict[str, Any]:
        return build_plans(
            fingerprint,
            network=spec.name,
            memory_budget_bytes=usable,
            budget_seconds=budget_seconds,
            device=chosen,
            configs=configs,
            plans_name=plans_name,
            regions_class_order=description.regions_class_order,
            cache_dir=location.preprocessed_dir / "planning_cache",
            budget_record={"device": chosen.type, "device_name": T.device_name(chosen) if present else None,
                           "gpu_memory_gb": nominal},
            source=str(fingerprint_path(location)),
            device_present=present,
            timed_thread_share=timed_thread_share,
        )

    plans = _with_idle_threads(plan, chosen.type == "cpu" and present)
    if donor is not None:
        from autoseg.planning.transfer import transfer_plans

        plans = transfer_plans(plans, *donor)
    write_plans(plans, plans_path(location.preprocessed_dir, plans_name), overwrite=overwrite)
    return plans, format_plan_table(plans)


def _checked_request(dataset_spec: DatasetSpec, gpu_memory_gb: float | None, budget_seconds: float | None,
                     network: str | None, configs: str | Sequence[str] | None, plans_name: str,
                     transfer_from: str | os.PathLike[str] | None
                     ) -> tuple[NetworkSpec, DatasetLocation, DatasetDescription, tuple[dict[str, Any], str, list[str]] | None]:
    """The network family, dataset and its description, and the transfer source's plans (None without
    one), each refused before fingerprinting when it cannot be planned: a bad number, a typo, a wrong
    label kind, a plans name that is not a file name, a source of other channels or configurations."""
    from autoseg.dataset.description import load_description
    from autoseg.paths import resolve_dataset

    check_gpu_memory(gpu_memory_gb)
    if budget_seconds is not None:
        check_budget_seconds(budget_seconds, PlanError)
    spec = get_network_spec(network or default_network())
    location = resolve_dataset(dataset_spec)
    description = load_description(location.raw_dir)
    spec.check_label_kind(description.regions_class_order is not None)
    plans_path(location.preprocessed_dir, plans_name)
    if transfer_from is None:
        return spec, location, description, None
    from autoseg.planning.transfer import fitting_source_plans

    donor = fitting_source_plans(location.name, description.channel_names, transfer_from,
                                 plannable_configurations(configs, spec.constraints.spatial_dims, spec.name))
    return spec, location, description, donor


def _dataset_fingerprint(location: DatasetLocation, num_workers: int | None) -> dict[str, Any]:
    """The dataset's fingerprint, extracted first when missing or stale. Its warnings (axis order, NRRD
    space units) are printed then, as autoseg fingerprint prints them; a fingerprint.json already written
    was warned of when it was made, so reading it prints nothing."""
    from autoseg.fingerprint.file import fingerprint_is_stale, fingerprint_path, load_fingerprint

    if not fingerprint_path(location).is_file() or fingerprint_is_stale(location):
        from autoseg.fingerprint.extract import extract_fingerprint  # SimpleITK and scipy: only when needed

        extract_fingerprint(location, num_workers, warn=_print_warning)
    return load_fingerprint(location)


def _with_idle_threads(plan: Callable[[float], dict[str, Any]], timed_here: bool) -> dict[str, Any]:
    """``plan(timed_thread_share)`` timed with the math threads training's `math_threads: auto` will start
    with (``timed_here``: a CPU plan timed on this machine): two threads on two cores, one of them busy,
    wait for each other and time 2x slower per thread, which flipped the demo's recipe under load; one
    thread on the idle core times the speed training will get, and the recipe is chosen for all threads
    (load changes the iterations, not the recipe)."""
    threads = idle_thread_choice() if timed_here else None
    with applied(threads):
        plans = plan(threads.threads / threads.limit if threads else 1.0)
    if threads is not None and threads.threads < threads.limit:
        plans["notes"].append(f"timed with {threads.describe()}, as training with math_threads: auto starts: "
                              f"the recipe is the one for all {threads.limit} threads, the iterations are for "
                              f"{threads.threads} (a quieter machine at training time trains more)")
    return plans
