"""``autoseg train ... --pretrained-weights SOURCE``: start a fold from another model's weights.

nnU-Net's ``-pretrained_weights`` loads a checkpoint's weights except the segmentation heads and crashes
on any other shape difference, after the user has copied the source plans by hand. Here the source is
a checkpoint file, a model folder (its first fold's final checkpoint) or a model zip from
``export-model`` (its first fold); every tensor whose name and shape match is loaded, the output heads
(tensors that differ only in their number of output channels, as when the classes differ) are
reported by name and keep their fresh initialisation, another number of input channels is refused as
such, and any other shape difference (another topology) is refused with the fix: plan the target with
``--transfer-plans-from``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import torch
from torch import nn

from autoseg.errors import TrainingError
from autoseg.paths import parse_dataset_id
from autoseg.utils.checkpoint_format import checkpoint_exists, checkpoint_from_bytes, checkpoint_name, read_checkpoint
from autoseg.utils.weights_file import LEGACY_SUFFIX, SUFFIX


PRETRAINED_FIX = "give a checkpoint written by this autoseg"
NNUNET_CHECKPOINT = "checkpoint_final.pth"  # what an nnU-Net model folder's fold_<k> holds
ZIP_MAGIC = b"PK"  # a zip's first bytes, also of one cut short (the zip reader then names its damage)
TORCH_ZIP_PICKLE = "data.pkl"  # the pickle in every torch.save file of torch's zip format (<name>/data.pkl)
PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # PROTO opcode: torch's legacy format, pickle
# A safetensors file starts with its header's length (8 bytes, which can begin as PICKLE_PROTOCOLS do), then the header.
SAFETENSORS_HEADER_START = (8, b"{")


@dataclass
class PretrainedReport:
    """What ``load_pretrained`` did, tensor names by outcome."""

    source: str
    loaded: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # fresh: another number of output channels
    missing: list[str] = field(default_factory=list)  # in the network, not in the source
    unused: list[str] = field(default_factory=list)  # in the source, not in the network
    warnings: list[str] = field(default_factory=list)  # e.g. weights that saw this fold's validation cases

    def lines(self) -> list[str]:
        out = [f"pretrained weights from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.heads:
            out.append(f"  not loaded (output heads, other number of classes): {', '.join(self.heads)}")
        if self.missing:
            out.append(f"  not in the pretrained model (kept fresh): {', '.join(self.missing)}")
        if self.unused:
            out.append(f"  in the pretrained model but not in this network (ignored): {', '.join(self.unused)}")
        return out + self.warnings


def _first_fold_checkpoint(folder: Path) -> Path:
    folds = sorted(p for p in folder.glob("fold_*") if checkpoint_exists(p / checkpoint_name("final")))
    if not folds:
        for pickled in sorted(folder.glob(f"fold_*/{NNUNET_CHECKPOINT}")):  # an nnU-Net model folder: say so, not 'no folds'
            _refuse_pickle(pickled)
        raise TrainingError(f"{folder}: holds no fold_<k>/{checkpoint_name('final')}; give a checkpoint file or a trained model folder")
    return folds[0] / checkpoint_name("final")


def _read_zip(path: Path) -> tuple[dict[str, Any], str]:
    """The first fold's weights of an ``export-model`` zip, checked as import-model checks it: only the zip's own
    CRCs were, so weights altered after export (the manifest's sha256 no longer theirs) were fine-tuned from."""
    from autoseg.evaluation.model_files import validate_model_file  # a model zip's one checked reader

    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted(n for n in archive.namelist() if n.endswith(SUFFIX))
    except (zipfile.BadZipFile, OSError) as exc:
        raise TrainingError(f"{path}: not a readable zip ({exc}); give a zip written by `autoseg export-model`") from None
    if not members:
        raise TrainingError(f"{path}: holds no weights; give a zip written by `autoseg export-model` (not --format onnx)")
    _refuse_several_models(path, members)
    verified = validate_model_file(path, build_networks=False)[1]
    where = f"{path}:{members[0]}"
    return checkpoint_from_bytes(verified[members[0]], where, TrainingError, PRETRAINED_FIX), where


def _refuse_several_models(path: Path, members: list[str]) -> None:
    """A zip of several models (a cascade's two stages, 2d with 3d_fullres) gave the weights of whichever model's
    name sorts first, without a word, and then refused them as of other input channels or shapes when another
    model of the zip would have fitted; ``--transfer-plans-from`` refuses such a zip too."""
    models = sorted({member.split("/", 1)[0] for member in members})
    if len(models) > 1:
        raise TrainingError(
            f"{path}: holds {len(models)} models ({', '.join(models)}); give one: install the zip with autoseg "
            "import-model and give that model's folder, or export that model alone"
        )


def _starts_as_zip(path: Path) -> bool:
    """A model zip is known by its first bytes, as --transfer-plans-from knows it: one renamed without .zip
    (model.bin) was read as a safetensors file and refused as 'not a readable safetensors file'."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError:
        return False  # the checkpoint reader that follows names the file's problem


def _pickle_kind(path: Path) -> str | None:
    """What pickle the file ``path`` is (torch.save's zip, as nnU-Net's ``checkpoint_final.pth``; torch's legacy
    format or a plain pickle), else None: such a file was refused as 'not a readable safetensors file (... header
    too large)', which named neither what it is nor what to give instead."""
    try:
        with path.open("rb") as handle:
            head = handle.read(SAFETENSORS_HEADER_START[0] + 1)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            torch_zip = any(PurePosixPath(name).name == TORCH_ZIP_PICKLE for name in names)
            return "a PyTorch pickle (torch.save's zip format, as nnU-Net's checkpoint_final.pth)" if torch_zip else None
    except (OSError, zipfile.BadZipFile):
        return None  # the reader that follows names the file's problem
    offset, brace = SAFETENSORS_HEADER_START
    if head[:2] not in PICKLE_PROTOCOLS or head[offset:offset + 1] == brace:
        return None
    return "a pickle (torch.save's legacy format, or pickle.dump)"


def _refuse_pickle(path: Path) -> None:
    """A pickle is never unpickled for pretrained weights (loading one can run code) and nnU-Net's networks name their
    tensors otherwise than autoseg's; autoseg's own pre-safetensors ``.pt`` is read before this (weights only)."""
    if kind := _pickle_kind(path):
        raise TrainingError(
            f"{path}: is {kind}, not an autoseg checkpoint; --pretrained-weights reads no pickles (unpickling can run "
            "code) and nnU-Net's weights do not fit autoseg's networks (other tensor names): give an autoseg model "
            "folder, its fold_<k>/checkpoint_final.safetensors or an export-model zip, or train the source model with autoseg"
        )


def _refuse_replaced_legacy(path: Path) -> None:
    """autoseg's checkpoint before safetensors (``.pt``) given as a file is read (weights only), as a model folder
    holding it is; refused, naming it, where a ``.safetensors`` file beside it replaced it (it was named a pickle
    that is no autoseg checkpoint)."""
    current = path.with_suffix(SUFFIX)
    if current.exists():
        raise TrainingError(f"{path}: autoseg's checkpoint before safetensors, with {current} beside it, which autoseg "
                            "reads in its place; give that file (or move it away to fine-tune from this one)")


def read_pretrained(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(network weights, checkpoint metadata, description) from a checkpoint, model folder or model zip."""
    path = Path(source)
    if path.is_dir():
        path = _first_fold_checkpoint(path)
    if path.suffix == LEGACY_SUFFIX and path.is_file():
        _refuse_replaced_legacy(path)  # a torch zip, read as a checkpoint: neither a pickle refused nor a model zip
    elif path.is_file():
        _refuse_pickle(path)
        if _starts_as_zip(path):
            tree, where = _read_zip(path)
            return tree["network_weights"], tree["metadata"], where
    missing = "not found; give a checkpoint file, a trained model folder or a model zip from export-model"
    tree = read_checkpoint(path, TrainingError, missing, PRETRAINED_FIX)
    return tree["network_weights"], tree["metadata"], str(path)


def _is_head(target: torch.Size, source: torch.Size) -> bool:
    """Shapes that differ only in the first (output channel) axis: a classifier head for other classes."""
    return len(target) == len(source) and target[1:] == source[1:] and target[0] != source[0]


def _input_channels(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """``(source, target)`` input channels when the network's first weight (its stem convolution) differs
    from the source's only there: another channel count, which ``--transfer-plans-from`` (the fix for
    other shape differences) cannot change, so that advice would send the user in a circle."""
    name = next((key for key, tensor in state.items() if tensor.ndim >= 3), None)
    if name is None or name not in weights:
        return None
    source, target = weights[name].shape, state[name].shape
    if len(source) == len(target) and source[1] != target[1] and source[0] == target[0] and source[2:] == target[2:]:
        return int(source[1]), int(target[1])
    return None


def _unusable_values(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], names: list[str]) -> list[str]:
    """The tensors among ``names`` whose values would load as other weights than the source's: integer or boolean
    ones for a floating-point tensor (``load_state_dict`` casts them without a word, to 0/1 weights), and NaN or
    infinite ones (a diverged source: training then stopped as diverged, advising a lower learning rate)."""
    problems = []
    for name in names:
        source, target = weights[name], state[name]
        if target.is_floating_point() and not source.is_floating_point():
            problems.append(f"{name} holds {source.dtype} values, the network {target.dtype}")
        elif source.is_floating_point() and not bool(torch.isfinite(source).all()):
            problems.append(f"{name} holds NaN or infinite values")
    return problems


# What ``read_pretrained`` gives: network weights, checkpoint metadata, where they came from.
PretrainedSource = tuple[dict[str, torch.Tensor], dict[str, Any], str]


def check_pretrained(state: dict[str, torch.Tensor], source: PretrainedSource, network_name: str) -> PretrainedReport:
    """Which tensors of ``source`` load into a network of ``state`` (its state dict: shapes and dtypes are enough, so
    a meta-device network checks before anything is written); refuse incompatible ones."""
    weights, metadata, where = source
    if metadata.get("network") not in (None, network_name):
        raise TrainingError(
            f"{where}: was trained as network {metadata['network']!r}, this run trains {network_name!r}; "
            f"add --network {metadata['network']} (and plan with --transfer-plans-from the source plans)"
        )
    report = PretrainedReport(where)
    incompatible = []
    for name, tensor in state.items():
        if name not in weights:
            report.missing.append(name)
        elif weights[name].shape == tensor.shape:
            report.loaded.append(name)
        elif _is_head(tensor.shape, weights[name].shape):
            report.heads.append(name)
        else:
            incompatible.append(f"{name} {tuple(weights[name].shape)} vs {tuple(tensor.shape)}")
    report.unused = [name for name in weights if name not in state]
    channels = _input_channels(state, weights)
    if channels is not None:
        raise TrainingError(
            f"{where}: the pretrained model takes {channels[0]} input channel(s), this network {channels[1]} (the "
            "dataset's channel_names); pretrained weights need the same input channels in the same order: fine-tune "
            "from a model trained on this dataset's channels, or train without --pretrained-weights"
        )
    if incompatible or not report.loaded:
        problem = f"{len(incompatible)} tensor(s) have other shapes ({'; '.join(incompatible[:3])})" if incompatible else "no tensor matches"
        raise TrainingError(
            f"{where}: does not fit this network: {problem}; plan this dataset with "
            "`autoseg plan DATASET --transfer-plans-from SOURCE_PLANS` so topology and patch match the pretrained model"
        )
    unusable = _unusable_values(state, weights, report.loaded)
    if unusable:
        raise TrainingError(
            f"{where}: {len(unusable)} tensor(s) hold values no network was trained to ({'; '.join(unusable[:3])}): the "
            "source model diverged, or its file was not written by training; fine-tune from another checkpoint of it "
            "(its checkpoint_best, or an earlier run), or train without --pretrained-weights"
        )
    return report


def _same_dataset(trained: Any, dataset_name: str) -> bool:
    """The source model's dataset is this one: the same id (a dataset renamed since keeps it), or the same name."""
    if not isinstance(trained, str):
        return False
    ids = parse_dataset_id(trained), parse_dataset_id(dataset_name)
    return ids[0] == ids[1] if None not in ids else trained == dataset_name


def optimistic_validation_warning(metadata: dict[str, Any], where: str, dataset_name: str | None,
                                  fold: str | None, split: str | None = None) -> str | None:
    """The warning for weights of a model of this dataset trained on another fold, on all cases, or on fold ``fold``
    of another split (``split``: this fold's ``split_digest``): they saw this fold's validation cases, so its
    cross-validation Dice is optimistic (nnU-Net says nothing of it). The same fold of the same split is a resume."""
    trained_on = metadata.get("fold")
    if dataset_name is None or fold in (None, "all") or trained_on is None or not _same_dataset(metadata.get("dataset_name"), dataset_name):
        return None
    trained_split = metadata.get("split_sha256")
    other_split = str(trained_on) == str(fold) and None not in (split, trained_split) and trained_split != split
    if str(trained_on) == "all":
        seen = f"was trained on every case of {dataset_name} (fold all), fold {fold}'s validation cases included"
    elif str(trained_on) != str(fold):
        seen = f"was trained on fold {trained_on} of {dataset_name}, whose training cases include fold {fold}'s validation cases"
    elif other_split:
        seen = (f"was trained on fold {fold} of {dataset_name} in another split of its cases (splits_final.json changed "
                f"since), whose training cases include the validation cases fold {fold} has now")
    else:
        return None
    return (f"warning: {where}: {seen}, so fold {fold}'s validation Dice will be optimistic; for an honest "
            f"cross-validation fine-tune from a model of another dataset, or from this dataset's fold {fold}"
            f"{' of this split' if other_split else ''}")


def load_pretrained(
    network: nn.Module, source: str | Path | PretrainedSource, network_name: str, log: Callable[[str], None] = print,
    dataset_name: str | None = None, fold: str | None = None, split: str | None = None,
) -> PretrainedReport:
    """Load every matching tensor of ``source`` (a path, or what ``read_pretrained`` gave) into ``network``;
    refuse incompatible shapes, and warn of weights that saw fold ``fold`` of ``dataset_name``'s validation cases
    (``split``: the fold's ``split_digest``)."""
    read = source if isinstance(source, tuple) else read_pretrained(source)
    state = network.state_dict()
    report = check_pretrained(state, read, network_name)
    warning = optimistic_validation_warning(read[1], read[2], dataset_name, fold, split)
    report.warnings = [warning] if warning else []
    network.load_state_dict({**state, **{name: read[0][name] for name in report.loaded}})
    for line in report.lines():
        log(line)
    return report
