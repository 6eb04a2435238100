"""``dataset.json``: nnU-Net v2's dataset description, read unchanged (reference §1.1)."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from autoseg.utils.jsonio import lone_surrogate_location, read_json
from autoseg.errors import DatasetError

IGNORE_LABEL_NAME = "ignore"


@dataclass
class DatasetDescription:
    """Parsed and validated ``dataset.json``.

    Attributes:
        channel_names: channel index (as str) -> modality name ("CT" selects CT normalization).
        labels: label name -> int, or list of ints for a region (region-based training).
        num_training: declared number of training cases (``numTraining``).
        file_ending: image file ending, for example ``.nii.gz``.
        regions_class_order: for region-based datasets, the label value each region writes.
        cases: the explicit ``dataset`` case list if given: case id -> {"images": [...], "label": ...}.
    """

    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    num_training: int
    file_ending: str
    regions_class_order: list[int] | None = None
    cases: dict[str, dict[str, Any]] | None = None
    name: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, list) for k, v in self.labels.items() if k != "background")

    @property
    def ignore_label(self) -> int | None:
        value = self.labels.get(IGNORE_LABEL_NAME)
        return int(value) if isinstance(value, int) else None

    @property
    def label_values(self) -> list[int]:
        """Every integer a label file may hold (background, classes, ignore)."""
        values: set[int] = set()
        for value in self.labels.values():
            values.update(value if isinstance(value, list) else [value])
        return sorted(values)

    @property
    def foreground_labels(self) -> list[int]:
        """Label values that are classes (not background, not ignore)."""
        ignore = self.ignore_label
        return [v for v in self.label_values if v != 0 and v != ignore]

    @property
    def class_names(self) -> dict[int, str]:
        """Foreground label value -> name (non-region datasets)."""
        return {v: k for k, v in self.labels.items() if isinstance(v, int) and k not in ("background", IGNORE_LABEL_NAME)}

    @property
    def regions(self) -> list[tuple[str, list[int]]]:
        """(name, label values) of each foreground class or region, in declaration order."""
        out = []
        for name, value in self.labels.items():
            if name in ("background", IGNORE_LABEL_NAME):
                continue
            out.append((name, list(value) if isinstance(value, list) else [int(value)]))
        return out

    @property
    def num_output_channels(self) -> int:
        """Network outputs: regions (sigmoid) or classes including background (softmax)."""
        return len(self.regions) if self.has_regions else len(self.regions) + 1


def _require(data: dict[str, Any], key: str, path: Path, hint: str) -> Any:
    if key not in data:
        raise DatasetError(f"{path}: missing key '{key}'; {hint}")
    return data[key]


def _whole_number(value: Any) -> Any:
    """A whole float (``3.0``, as some JSON writers emit) as that integer; anything else unchanged for the checks."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integer(value: Any) -> Any:
    """A label value as nnU-Net v2 reads it (``int(value)``): ``"1"`` and ``1.0`` are 1, in lists too;
    anything else is returned unchanged for the checks to name."""
    if isinstance(value, list):
        return [_integer(v) for v in value]
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return _whole_number(value)


_JSON_KINDS = {list: "a list", str: "a string", bool: "true or false", float: "a fraction", dict: "a mapping",
               type(None): "null"}


def _background_problem(labels: Any) -> str | None:
    """Why ``labels`` lacks nnU-Net's ``"background": 0``, with the fix (None when it has it): the line said only
    '(got None)' for labels written from 1 without a background entry, or with background under another name."""
    if not isinstance(labels, dict):
        return f'got {labels!r}; write each name with its value, e.g. {{"background": 0, "tumor": 1}}'
    if "background" in labels:
        value = labels["background"]
        if type(value) is int and value == 0:
            return None
        if type(value) is not int:  # [0] was told to 'renumber the labels so background is 0'
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            return f'got {json.dumps(value)}; it must be the integer 0, not {kind}: write "background": 0'
        return (f"got {labels['background']!r}; renumber the labels so background is 0 and the classes 1, 2, ... "
                "(in dataset.json and the label files)")
    zero = next((name for name, value in labels.items() if value == 0 and not isinstance(value, bool)), None)
    if zero is not None:
        return f"value 0 is named {zero!r}; rename it \"background\""
    return 'it has no "background" entry; add "background": 0 (the label files\' value for no structure)'


def _whole_floats_as_int(order: Any) -> Any:
    """``regions_class_order`` with whole floats as integers: ``[1.0, 2.0]`` passed and was recorded in the plans and
    shown in reports as written; anything else is returned unchanged for the checks to name."""
    if not isinstance(order, list):
        return order
    return [_whole_number(v) for v in order]


def _as_nnunet_reads(labels: dict[str, Any], has_order: bool) -> dict[str, Any]:
    """nnU-Net v2 treats a dataset as region-based only when a label lists several values; one-value lists
    alone (``"a": [1]``) are plain classes. Kept as regions where ``regions_class_order`` says so."""
    if has_order or any(isinstance(v, list) and len(v) > 1 for v in labels.values()):
        return labels
    return {name: v[0] if isinstance(v, list) and len(v) == 1 else v for name, v in labels.items()}


def _num_training(value: Any, path: Path) -> int:
    """``numTraining`` as a count: a whole float (``3.0``, as some writers emit and nnU-Net accepts) is that
    integer; JSON true (a Python int) passed once and verify said 'numTraining is True but 4 case(s) were found'."""
    value = _whole_number(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetError(f"{path}: numTraining must be a non-negative integer, got {value!r}; write the number of "
                           'training cases without quotes or a fraction, e.g. "numTraining": 4')
    return value


def parse_description(data: dict[str, Any], path: Path) -> DatasetDescription:
    """Validate a loaded ``dataset.json``; every problem names the file and the fix.

    The object check is here, not only in ``load_description``: a dataset.json of a model zip that held a list
    was refused as "missing key 'channel_names'"."""
    _check_object(data, path)
    channels = _channel_names(data, path)
    labels = _labels(data, path)
    num_training = _num_training(_require(data, "numTraining", path, "add the number of training cases"), path)
    file_ending = _file_ending(data, path)
    desc = DatasetDescription(
        channel_names={str(k): str(v) for k, v in channels.items()},
        labels=labels,
        num_training=num_training,
        file_ending=file_ending,
        regions_class_order=_whole_floats_as_int(data.get("regions_class_order")),
        cases=_case_list(data, path, file_ending),
        name=str(data.get("name", "")),
        raw=data,
    )
    if not desc.has_regions:
        # As nnU-Net's LabelManager, which reads it only for regions: kept for classes, the plans recorded it,
        # and prediction of the softmax-trained model took it for sigmoid regions and failed (IndexError).
        desc.regions_class_order = None
    _check_names(desc, path)
    _check_label_values(desc, path)
    return desc


def _check_object(data: Any, path: Path) -> None:
    """dataset.json holds an object with whole characters (no lone surrogate escape)."""
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must hold a JSON object")
    if (location := lone_surrogate_location(data)) is not None:
        raise DatasetError(f"{path}: {location} holds a lone surrogate escape (\\ud800 to \\udfff: half of a UTF-16 pair, "
                           "no character); write the text with whole characters (or a \\ud83d\\ude00-style pair)")


def _channel_names(data: dict[str, Any], path: Path) -> dict[Any, Any]:
    """``channel_names``, checked: a non-empty mapping numbered 0, 1, 2, ... of names."""
    if "modality" in data and "channel_names" not in data:
        raise DatasetError(f"{path}: 'modality' is nnU-Net v1 syntax; rename it to 'channel_names'")
    channels = _require(data, "channel_names", path, 'add e.g. "channel_names": {"0": "CT"}')
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f'{path}: channel_names must be a non-empty mapping like {{"0": "CT"}}')
    keys = sorted(channels, key=lambda k: int(k) if str(k).isdecimal() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(keys))]:
        # 'in order' and no fix: {"1": "CT"} or {"0": ..., "2": ...} (files _0000 and _0002) left the user guessing
        wanted = ", ".join(f'"{i}"' for i in range(len(keys)))
        raise DatasetError(f"{path}: channel_names keys must be 0, 1, 2, ... without gaps (channel k is the files' _000k "
                           f"suffix); got {list(channels)}: number the {len(keys)} channel(s) {wanted} and rename the "
                           "image files' suffixes to match")
    unnamed = next((key for key in keys if not isinstance(channels[key], str)), None)
    if unnamed is not None:  # ["CT"] was read as the name "['CT']" and normalised by z-score, not as CT
        raise DatasetError(f'{path}: channel_names["{unnamed}"] is {channels[unnamed]!r}, not a name; write the modality '
                           'as a string, e.g. "CT" (which selects CT normalisation) or "MRI"')
    return channels


def _labels(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``labels`` as nnU-Net reads them, checked: background 0, each value an integer or a region's list."""
    labels = _require(data, "labels", path, 'add e.g. "labels": {"background": 0, "tumor": 1}')
    if isinstance(labels, dict):
        labels = {name: _integer(value) for name, value in labels.items()}
    if isinstance(labels, dict) and "background" not in labels and labels.get("0") == "background":
        # nnU-Net v1's {"0": "background", "1": "tumor"} was refused as 'labels must map "background" to 0 (got
        # None)', with no word of the cause
        swapped = ", ".join(f'"{name}": {value}' for value, name in list(labels.items())[:3])
        raise DatasetError(f"{path}: labels maps values to names (nnU-Net v1 syntax); write each name with its value: "
                           f"{{{swapped}{', ...' if len(labels) > 3 else ''}}}")
    if problem := _background_problem(labels):
        raise DatasetError(f'{path}: labels must map "background" to 0: {problem}')
    labels = _as_nnunet_reads(labels, "regions_class_order" in data)
    for name, value in labels.items():
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        # JSON true is a Python int (1): [true, 2] passed as a region
        ok = ok or (isinstance(value, list) and value and all(type(v) is int and v > 0 for v in value))
        if not ok:
            raise DatasetError(f"{path}: label '{name}' has value {value!r}; use a non-negative integer or a list of positive integers (region)")
    return labels


def _file_ending(data: dict[str, Any], path: Path) -> str:
    """``file_ending``, checked: a string starting with '.'."""
    file_ending = _require(data, "file_ending", path, 'add e.g. "file_ending": ".nii.gz"')
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        example = f".{file_ending}" if isinstance(file_ending, str) and file_ending.strip() else ".nii.gz"
        raise DatasetError(f"{path}: file_ending must start with '.', got {file_ending!r}; write "
                           f'"file_ending": "{example}"')
    return file_ending


def _case_list(data: dict[str, Any], path: Path, file_ending: str) -> dict[str, dict[str, Any]] | None:
    """The optional ``dataset`` mapping of case ids to their files (None without one)."""
    cases = data.get("dataset")
    if cases is not None and not isinstance(cases, dict):
        # every case lookup ran into AttributeError ('list' object has no attribute 'items'): an internal error
        raise DatasetError(f'{path}: "dataset" must map each case id to its files, like {{"case1": {{"images": '
                           f'["imagesTr/case1_0000{file_ending}"], "label": "labelsTr/case1{file_ending}"}}}} '
                           f"(got a {type(cases).__name__}); or remove it to find the cases in imagesTr/labelsTr")
    return cases


def _check_names(desc: DatasetDescription, path: Path) -> None:
    """Label and channel names are not empty and hold no control characters: a newline in a label name broke
    evaluate's terminal table (and every other one-line message naming the class)."""
    named = [(f"label name {name!r}", name) for name in desc.labels]
    named += [(f'channel_names["{key}"] {name!r}', name) for key, name in desc.channel_names.items()]
    blank = [(f"the label of value {value} has an empty name {name!r}", f'e.g. "tumor": {value}')
             for name, value in desc.labels.items() if not name.strip()]
    blank += [(f'channel_names["{key}"] is empty ({name!r})', f'e.g. "{key}": "CT"')
              for key, name in desc.channel_names.items() if not name.strip()]
    if blank:  # passed verify, and reports and evaluate's table showed a class or channel with no name
        raise DatasetError(f"{path}: {blank[0][0]}; give it a name, {blank[0][1]}")
    for where, name in named:
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise DatasetError(f"{path}: {where} holds a control character (a newline, tab or the like); "
                               "write the name on one line without them")


def _check_label_values(desc: DatasetDescription, path: Path) -> None:
    if not desc.regions:
        # passed verify, and fingerprint then blamed the label maps: 'no label map holds any of the classes ()'
        declared = " and the ignore label" if desc.ignore_label is not None else ""
        raise DatasetError(f"{path}: labels declare no class, only background{declared}; declare the classes the "
                           'label maps hold, e.g. "labels": {"background": 0, "tumor": 1}')
    _check_label_range(desc, path)
    ints = sorted(v for k, v in desc.labels.items() if isinstance(v, int))
    if len(set(ints)) != len(ints):
        raise DatasetError(f"{path}: two labels share a value ({ints}); give each class its own integer")
    if not desc.has_regions and ints != list(range(len(ints))):
        raise DatasetError(
            f"{path}: label values must be consecutive integers 0..{len(ints) - 1}, got {ints}; renumber the "
            "label files and dataset.json"
        )
    _check_ignore_label(desc, path)
    if desc.has_regions:
        order = desc.regions_class_order
        if not isinstance(order, list) or len(order) != len(desc.regions):
            got = "" if order is None else f", got {order!r}"
            raise DatasetError(
                f"{path}: region-based labels need 'regions_class_order' with one label value per region "
                f"({len(desc.regions)} regions{got}); {_order_suggestion(desc.regions)}"
            )
        for value, (name, values) in zip(order, desc.regions):
            # Export writes this value where the region is predicted: any other value would not count as
            # the region when the label map is read back (evaluation, postprocessing, the cascade).
            if isinstance(value, bool) or value not in values:  # true passed as 1 (true == 1 in Python)
                raise DatasetError(
                    f"{path}: regions_class_order gives region '{name}' the value {value!r}, not one of its labels "
                    f"{values}; give each region one of its own labels, in the regions' order"
                )
        _check_regions_read_back(desc, path)


# The preprocessed label maps are int16 (-1 outside the nonzero mask, store.py): a larger value would wrap around.
MAX_LABEL_VALUE = 2**15 - 1


def _check_label_range(desc: DatasetDescription, path: Path) -> None:
    """Refuse a label value beyond ``MAX_LABEL_VALUE``: a region of 4000000000 passed verify, and fingerprint ran
    out of memory counting voxels per value up to it (reported as 'retry with fewer workers')."""
    named = [(name, v) for name, value in desc.labels.items() for v in (value if isinstance(value, list) else [value])]
    name, value = max(named, key=lambda item: item[1])
    if value > MAX_LABEL_VALUE:
        raise DatasetError(f"{path}: label '{name}' holds the value {value}, beyond {MAX_LABEL_VALUE} (preprocessed label "
                           "maps are 16-bit integers); renumber it, in dataset.json and the label files, to a small integer")


def _check_ignore_label(desc: DatasetDescription, path: Path) -> None:
    """The ignore label is one integer, the highest value, in no region: a list was read as no ignore
    label at all (its voxels silently trained and scored as background), and a region holding it would
    count ignored voxels as that region or, through regions_class_order, write the ignore value into
    predictions."""
    value = desc.labels.get(IGNORE_LABEL_NAME)
    if value is None:
        return
    if not isinstance(value, int):
        raise DatasetError(f"{path}: the 'ignore' label is {value!r}; give it one integer, e.g. \"ignore\": {max(desc.label_values)}")
    if value != max(desc.label_values):
        # the message named no fix; nnU-Net v2 requires the same (its LabelManager asserts it)
        highest = max(desc.label_values)
        raise DatasetError(f"{path}: the 'ignore' label must have the highest value; it is {value}, below {highest}: give "
                           f"it {highest} and renumber the classes above it down by one, in dataset.json and the label files")
    holding = [name for name, values in desc.regions if value in values]
    if holding:
        raise DatasetError(
            f"{path}: region '{holding[0]}' lists the ignore label's value {value}; ignored voxels belong to no "
            f"region: remove {value} from it"
        )


Regions = list[tuple[str, list[int]]]


def _members(regions: Regions, value: int) -> list[str]:
    return [name for name, values in regions if value in values]


def _misread_label(regions: Regions, order: list[int]) -> tuple[int, int] | None:
    """The first label whose voxels export (writing ``order``, later regions overwriting earlier ones) as a value
    that reads back as other regions, with that value: ``(label, written)``; None when every label reads back."""
    for label in sorted({v for _, values in regions for v in values}):
        last = max(i for i, (_, values) in enumerate(regions) if label in values)
        if _members(regions, order[last]) != _members(regions, label):
            return label, order[last]
    return None


def _check_regions_read_back(desc: DatasetDescription, path: Path) -> None:
    """Export writes each region's value in ``regions_class_order``, later regions overwriting earlier ones:
    every label's voxels must read back as the same regions, else a region is silently lost from every label
    map (a nested region listed before the one containing it; regions that overlap without nesting)."""
    order = desc.regions_class_order or []
    misread = _misread_label(desc.regions, order)
    if misread is not None:
        label, written = misread
        raise DatasetError(
            f"{path}: with regions_class_order {order}, voxels of label {label} (regions "
            f"{', '.join(_members(desc.regions, label))}) are exported as {written}, which reads back as region(s) "
            f"{', '.join(_members(desc.regions, written))}; list each region after every region containing it (largest "
            "first, as in nnU-Net's BraTS: whole tumor, tumor core, enhancing tumor); "
            "regions that overlap without nesting cannot be written as one label map"
        )


def _region_order(regions: Regions) -> list[int] | None:
    """A ``regions_class_order`` for ``regions`` listed in this order: each region writes its smallest label that
    no later region lists (a later region overwrites it); a region whose every label a later region lists is
    always overwritten, so any of its labels will do (its smallest). None when a label would read back as other
    regions (regions that overlap without nesting)."""
    order = []
    for i, (_, values) in enumerate(regions):
        own = [v for v in values if not any(v in later for _, later in regions[i + 1:])]
        order.append(min(own or values))
    return None if _misread_label(regions, order) is not None else order


def _order_suggestion(regions: Regions) -> str:
    """The fix for a missing or miscounted ``regions_class_order``: a valid order to write, for the regions as
    listed or, failing that, listed largest first (nnU-Net's rule); the line named no order at all."""
    why = ("each region's value is its smallest label that no later region lists, or any of its labels where later "
           "regions list them all, as later regions overwrite earlier ones")
    if (order := _region_order(regions)) is not None:
        return f'add "regions_class_order": {order} ({why})'
    largest_first = sorted(regions, key=lambda region: -len(region[1]))
    if (order := _region_order(largest_first)) is not None:
        names = ", ".join(name for name, _ in largest_first)
        return f'list the regions in labels largest first ({names}) and add "regions_class_order": {order} ({why})'
    return "no order writes these regions as one label map: they overlap without nesting; make each region hold or exclude every other"


def load_description(dataset_dir: str | Path) -> DatasetDescription:
    """Read ``dataset_dir/dataset.json``."""
    path = Path(dataset_dir) / "dataset.json"
    data = read_json(
        path, DatasetError, "not found; every dataset folder needs a dataset.json (see docs/dataset-format.md)",
        "fix the syntax", unique_keys=True,
    )
    return parse_description(data, path)


def channel_list(channel_names: Mapping[str, str]) -> str:
    """``{"0": "T2", "1": "ADC"}`` -> ``0000: T2, 0001: ADC``: each channel's file suffix and name, for
    messages that tell a user which files to supply."""
    return ", ".join(f"{int(key):04d}: {name}" for key, name in channel_names.items())


def previous_stage_label_problem(
    previous: DatasetDescription, previous_path: Path, cascade: DatasetDescription, cascade_path: Path | str
) -> str | None:
    """Why a cascade stage cannot take its previous stage's labels as input (``None`` when it can): its input
    holds one one-hot channel per label of its own dataset.json, so a previous stage trained on other labels (the
    dataset.json edited between the two stages: classes renumbered, added or removed) fed it channels of other
    classes without a word, or failed with the network's internal channel-count error."""
    if previous.labels == cascade.labels:
        return None
    return (
        f"{previous_path}: the previous stage's labels {previous.labels} differ from {cascade.labels} of "
        f"{cascade_path}, whose model takes one input channel per label of its own: the two stages were trained on "
        "different versions of the dataset; train both with the same dataset.json (where only label names were "
        "changed, give both model folders' dataset.json the same labels)"
    )
