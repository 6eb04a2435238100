"""The training configuration: YAML defaults, the network family's own defaults, and ``--set key=value`` overrides.

Configuration is data (style.md): nnU-Net's hyperparameters live in ``default_config.yaml`` instead of
trainer subclasses. An override must name an existing key, keep its type and stay in its range
(``config_rules``), so a typo fails at once with the list of valid keys instead of silently training
with the default, and a refused value is refused before a run writes anything.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec
from autoseg.planning.memory import machine_ram_bytes
from autoseg.training.config_rules import check_together, check_value, described, named_setting
from autoseg.utils.mappings import deep_merge, flatten

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")
# Bytes of one input voxel of a batch (float32): the least memory a training step needs, whatever its network.
_INPUT_BYTES_PER_VOXEL = 4
# Keys whose default is null or "auto" and the value types they accept besides it.
_OPEN_TYPES: dict[str, tuple[type, ...]] = {
    "iterations_per_epoch": (int,),
    "batch_size": (int,),
    "patch_size": (list,),
    "num_workers": (int,),
    "math_threads": (int,),
    "case_cache_mb": (int, float),
    "channels_last": (bool,),
    "augmentation.rotation.degrees_2d": (int, float),
    "augmentation.mirror.axes": (list,),
    "augmentation.mask_channels": (list,),
}


def load_defaults(path: Path = DEFAULT_CONFIG_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# Sections whose keys are not fixed by the defaults: network_options.<name> is passed to the network
# builder, which rejects options its family does not take.
FREE_FORM_SECTIONS = ("network_options",)
# How a refusal of the plans file's training settings names the file where the caller knows no path.
PLANS_FILE = "the plans file"


class _OverrideLoader(yaml.SafeLoader):
    """YAML 1.1 reads a float with an exponent but no dot or no exponent sign (``1e-3``, ``1.0e3``) as a string; read
    here as the float it is in YAML 1.2 and Python, as a setting, in a list or nested: ``optimizer.betas=[0.9, 1e-3]``
    was refused as not two numbers, though ``optimizer.lr=1e-3`` was taken."""


_OverrideLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=1e-3"`` -> ``("optimizer.lr", 0.001)``; the value is read as YAML. A value nested deeper than
    Python's recursion limit (``[[[...]]]``, 2000 deep) stopped the command with an internal RecursionError: it is
    refused as YAML the reader cannot take."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainingError(f"--set {text!r}: expected key=value, e.g. --set optimizer.lr=0.003")
    try:
        value = yaml.load(raw, Loader=_OverrideLoader) if raw.strip() else None
    except (yaml.YAMLError, RecursionError) as exc:
        raise TrainingError(f"--set {text[:80]!r}: the value is not valid YAML ({exc.__class__.__name__})") from exc
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans; keep the word the user wrote
    return key, value


def _as_float(value: int | float) -> float:
    """``value`` as a float, infinite for an integer beyond any float: ``--set optimizer.lr=<400 digits>`` raised
    an internal OverflowError; infinite, the rules refuse it as they refuse ``.inf``."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _coerce(key: str, value: Any, default: Any, origin: str = "the default") -> Any:
    """``value`` converted to the type of ``default`` (``origin`` says whose value that is) where that is
    lossless, else a TrainingError."""
    allowed = _OPEN_TYPES.get(key, ())
    if value is None and key in _OPEN_TYPES and default is None or value == "auto" == default:
        return value
    if isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _as_float(value)
    elif isinstance(default, str) and key not in _OPEN_TYPES and isinstance(value, str):
        return value
    elif isinstance(default, list) and isinstance(value, list):
        return value
    elif isinstance(default, dict) and isinstance(value, dict):
        _check_option_names(key, value)
        return value
    expected = _type_names(default, allowed)
    raise TrainingError(
        f"--set {key}={value!r}: expected {expected}, got {type(value).__name__}; {described(default, origin)}"
    )


def _check_option_names(key: str, options: Mapping[Any, Any]) -> None:
    """Refuse a mapping whose keys are not option names: YAML reads ``{1: 2}`` or ``{null: 2}`` with such a key, and
    the network builder, taking the options as keyword arguments, stopped with an internal TypeError."""
    odd = [name for name in options if not isinstance(name, str)]
    if odd:
        raise TrainingError(f"--set {key}={options!r}: option names must be words, not {odd!r}; e.g. --set "
                            f"'{key}={{deep_supervision: false}}'")


def _type_names(default: Any, allowed: tuple[type, ...]) -> str:
    names = [type(default).__name__] if default is not None and not (allowed and default == "auto") else []
    names += [t.__name__ for t in allowed]
    if allowed:
        names.append("'auto'" if default == "auto" else "null")
    return " or ".join(dict.fromkeys(names))


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str], planned: Iterable[str] = ()) -> dict[str, Any]:
    """Apply ``key=value`` overrides; unknown keys, wrong types and values out of range (config_rules)
    raise a TrainingError. Each override is typed and described against ``config``'s own value (the plan's
    for the ``planned`` keys), not one an earlier override of the same key set: that one named its own
    value "the default" and refused a later ``--set num_workers=auto`` after ``--set num_workers=2``."""
    result = copy.deepcopy(dict(config))
    flat = flatten(result)
    planned = set(planned)
    for text in overrides:
        key, value = parse_override(text)
        head, _, option = key.partition(".")
        if head in FREE_FORM_SECTIONS and option and "." not in option:
            # Family-specific network options (e.g. vae, slice_axis): the network builder checks them.
            result.setdefault(head, {})[option] = value
            continue
        if key not in flat:
            raise TrainingError(
                f"--set {text!r}: unknown configuration key {key!r}; valid keys: {', '.join(sorted(flat))}"
            )
        origin = "the plan's value" if key in planned else "the default"
        value = _coerce(key, value, flat[key], origin)
        check_value(key, value, flat[key], origin)
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return result


def resolve_config(
    network: str,
    overrides: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    planned: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults, then the family's ``training_defaults`` from the registry, then the plan's training
    settings (``planned``: a short budgeted schedule's, planning/short_schedule.py), then the user's
    overrides."""
    return _resolve_with_sources(network, list(overrides), defaults, planned)[0]


def _resolve_with_sources(network: str, overrides: Sequence[str], defaults: Mapping[str, Any] | None,
                          planned: Mapping[str, Any] | None, plans_file: str = PLANS_FILE
                          ) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`resolve_config` and its :func:`setting_sources`, built once for the checks after it too;
    ``plans_file`` names the file ``planned`` came from in a refusal."""
    base = dict(defaults if defaults is not None else load_defaults())
    merged = deep_merge(base, get_network_spec(network).training_defaults)
    planned = {} if planned is None else planned
    merged = _apply_planned(merged, planned, plans_file)
    config = apply_overrides(merged, overrides, flatten(planned) if isinstance(planned, Mapping) else ())
    sources = setting_sources(overrides, planned)
    check_together(config, sources)
    return config, sources


PLANNED_SOURCE = "the plans file's training settings"


def setting_sources(overrides: Iterable[str], planned: Mapping[str, Any] | None) -> dict[str, str]:
    """Where each setting not at its default came from, for the refusals that name it: ``--set`` or the plans file
    (a value of the plans file was refused as if given with ``--set``, sending the user to a command line they never
    typed)."""
    sources = dict.fromkeys(flatten(planned), PLANNED_SOURCE) if isinstance(planned, Mapping) else {}
    sources.update(dict.fromkeys((parse_override(text)[0] for text in overrides), "--set"))
    return sources


def _apply_planned(config: Mapping[str, Any], planned: Mapping[str, Any], plans_file: str = PLANS_FILE) -> dict[str, Any]:
    """The plan's settings, checked by the same rules as ``--set`` (a hand-edited plans file is input too);
    a refusal names ``plans_file`` as the source, not the ``--set`` the user never typed."""
    if not isinstance(planned, Mapping):
        raise TrainingError(
            f"{plans_file}: its 'training' settings must be a mapping of setting to value, got "
            f"{type(planned).__name__}; correct or remove them in the plans file, or re-run `autoseg plan`"
        )
    texts = [f"{key}={json.dumps(value)}" for key, value in flatten(planned).items()]
    try:
        return apply_overrides(config, texts)
    except TrainingError as exc:
        refusal = str(exc).removeprefix("--set ")  # the rules word every refusal for the command line
        raise TrainingError(
            f"{plans_file}: its 'training' settings are refused: {refusal}; correct or remove them in the plans "
            "file, or re-run `autoseg plan`"
        ) from exc


def _check_batch_fits_ram(batch_setting: int | None, plan_batch: int, patch: Sequence[int], sample: Sequence[int],
                          channels: int, sources: Mapping[str, str]) -> None:
    """Refuse a batch whose float32 input alone exceeds this machine's RAM, the least any network needs: each sample is
    cropped at ``sample`` (the patch and the room its rotation and scaling take) before the spatial transform. Where no
    memory model applies (another family than the plan's) ``--set batch_size=10**30`` passed the rules and stopped
    training with an internal ValueError from numpy after the run's files were written, and
    ``augmentation.scaling.range=[0.7, 1000]`` ran out of memory building the first batch."""
    batch = plan_batch if batch_setting is None else batch_setting
    sample_bytes = channels * math.prod(sample) * _INPUT_BYTES_PER_VOXEL
    ram = machine_ram_bytes()
    if batch * sample_bytes > ram:
        given = f"the plan's batch_size={batch}" if batch_setting is None else named_setting("batch_size", batch, sources)
        raise TrainingError(
            f"{given}: {batch} samples of {list(sample)} voxels (the patch {list(patch)} and the room its rotation "
            f"and scaling take) of {channels} channel(s) are {batch * sample_bytes / 2**30:.3g} GiB of float32 input "
            f"alone, more than this machine's {ram / 2**30:.1f} GiB of RAM; give a smaller batch_size (null: the plan's "
            f"{plan_batch}) or augmentation.scaling.range"
        )


def dump_config(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)


def resolve_training_config(network: str, overrides: Iterable[str], plan: Mapping[str, Any],
                            plans_file: str = PLANS_FILE) -> dict[str, Any]:
    """The config a fold trains with: ``resolve_config`` with the plan's training settings (chosen for
    the plan's family: another ``network`` trains without them; ``plans_file`` names their file in a
    refusal), the augmentation resolved for the patch and the plan's normalization, and an explicit
    ``--set num_epochs`` winning over the plan's schedule."""
    from autoseg.training.augmentation import resolve_augmentation, sampling_size  # batchgenerators: only when training

    planned = plan.get("training") if network == plan["network"]["name"] else None
    config, sources = _resolve_with_sources(network, list(overrides), None, planned, plans_file)
    patch = plan["patch_size"] if config["patch_size"] is None else config["patch_size"]  # [] is no patch: refused
    if len(patch) != len(plan["patch_size"]):
        raise TrainingError(
            f"--set patch_size={list(patch)}: this configuration is {len(plan['patch_size'])}D; give "
            f"{len(plan['patch_size'])} values (the plan's patch is {list(plan['patch_size'])})"
        )
    config["augmentation"] = resolve_augmentation(config["augmentation"], patch, plan["normalization"],
                                                  plan.get("mirror_axes"))
    _check_batch_fits_ram(config["batch_size"], plan["batch_size"], patch, sampling_size(patch, config["augmentation"]),
                          len(plan["normalization"]), sources)
    if sources.get("num_epochs") == "--set":
        config["use_plan_schedule"] = False
    return config
