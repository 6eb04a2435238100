"""dataset.json parsing: regions, ignore label, explicit case lists, and each error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.dataset.cases import scan_training_cases
from autoseg.dataset.description import load_description, parse_description
from autoseg.errors import DatasetError
from conftest import SHARED_DATA

BASE = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}


def test_classes_and_ignore_label() -> None:
    desc = parse_description(BASE | {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}}, Path("d.json"))
    assert desc.ignore_label == 3 and desc.foreground_labels == [1, 2] and desc.num_output_channels == 3
    assert desc.label_values == [0, 1, 2, 3] and desc.num_channels == 2 and not desc.has_regions


def test_regions_need_class_order() -> None:
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    desc = parse_description(BASE | {"labels": regions, "regions_class_order": [1, 2, 3]}, Path("d.json"))
    assert desc.has_regions and desc.num_output_channels == 3
    assert desc.regions == [("whole", [1, 2, 3]), ("core", [2, 3]), ("enhancing", [3])]
    with pytest.raises(DatasetError, match="region-based labels need 'regions_class_order' with one label value per region"):
        parse_description(BASE | {"labels": regions}, Path("d.json"))


WHY_ORDER = ("each region's value is its smallest label that no later region lists, or any of its labels where later "
             "regions list them all, as later regions overwrite earlier ones")


@pytest.mark.parametrize(("regions", "order", "fix"), [
    ({"whole": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}, None,
     f'(3 regions); add "regions_class_order": [2, 1, 4] ({WHY_ORDER})'),
    ({"whole": [1, 2], "core": [2]}, [1], f'(2 regions, got [1]); add "regions_class_order": [1, 2] ({WHY_ORDER})'),
    # nnU-Net's rule: regions largest first, so that each nested region overwrites the one containing it
    ({"enhancing": 4, "whole": [1, 2, 3, 4], "core": [1, 3, 4]}, None,
     '(3 regions); list the regions in labels largest first (whole, core, enhancing) and add "regions_class_order": '
     f"[2, 1, 4] ({WHY_ORDER})"),
    # whole has no label no later region lists: always overwritten, any of its labels will do (was refused as
    # 'they overlap without nesting' though [1, 2, 3, 1] passes)
    ({"whole": [1, 2, 3], "core": [2, 3], "enh": [3], "ncr": [1]}, None,
     f'(4 regions); add "regions_class_order": [1, 2, 3, 1] ({WHY_ORDER})'),
    ({"left": [1, 2], "right": [2, 3]}, None,
     "(2 regions); no order writes these regions as one label map: they overlap without nesting; make each region "
     "hold or exclude every other"),
])
def test_a_missing_region_order_is_suggested(regions: dict, order: list[int] | None, fix: str) -> None:
    """The line said only that regions need 'regions_class_order' with one value per region, not which order."""
    given = {} if order is None else {"regions_class_order": order}
    with pytest.raises(DatasetError) as raised:
        parse_description(BASE | {"labels": {"background": 0, **regions}} | given, Path("d.json"))
    assert str(raised.value) == f"d.json: region-based labels need 'regions_class_order' with one label value per region {fix}"
    if "add" in fix:  # the suggestion itself passes
        suggested = json.loads(fix.split('"regions_class_order": ')[1].split(" (")[0])
        listed = dict(sorted(regions.items(), key=lambda item: -len(item[1]) if isinstance(item[1], list) else -1))
        labels = listed if "largest first" in fix else regions
        desc = parse_description(BASE | {"labels": {"background": 0, **labels}, "regions_class_order": suggested}, Path("d.json"))
        assert desc.regions_class_order == suggested


def test_each_region_writes_one_of_its_own_labels() -> None:
    """[1, 3, 2] would export tumor core as 3 and enhancing as 2: read back, label 2 is not enhancing."""
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
    with pytest.raises(DatasetError, match=r"d.json: regions_class_order gives region 'enhancing' the value 2, not one "
                                           r"of its labels \[3\]; give each region one of its own labels"):
        parse_description(BASE | {"labels": regions, "regions_class_order": [1, 3, 2]}, Path("d.json"))


@pytest.mark.parametrize(("regions", "order", "message"), [
    # enhancing listed before the core containing it: the core overwrites it, enhancing is never exported
    ({"whole": [1, 2, 3], "enhancing": [3], "core": [2, 3]}, [1, 3, 2],
     r"voxels of label 3 \(regions whole, enhancing, core\) are exported as 2, which reads back as region\(s\) whole, core"),
    # overlapping without nesting: no value reads back as both
    ({"left": [1, 2], "right": [2, 3]}, [1, 3], r"voxels of label 2 \(regions left, right\) are exported as 3, which reads back as region\(s\) right"),
])
def test_regions_must_read_back_from_the_exported_label_map(regions: dict, order: list[int], message: str) -> None:
    """Accepted before, and every exported label map silently lost a region."""
    with pytest.raises(DatasetError, match=rf"d.json: with regions_class_order \[{', '.join(map(str, order))}\], {message}; "
                                           "list each region after every region containing it"):
        parse_description(BASE | {"labels": {"background": 0, **regions}, "regions_class_order": order}, Path("d.json"))
    disjoint = parse_description(BASE | {"labels": {"background": 0, "a": [1], "b": [2]}, "regions_class_order": [1, 2]},
                                 Path("d.json"))
    assert disjoint.regions == [("a", [1]), ("b", [2])]


@pytest.mark.parametrize(("labels", "order", "message"), [
    # a list: was read as no ignore label, its voxels trained and scored as background
    ({"whole": [1, 2], "core": [2], "ignore": [3]}, [1, 2], r"the 'ignore' label is \[3\]; give it one integer"),
    # a region holding the ignore value: regions_class_order [3, 2] wrote the ignore value into predictions
    ({"whole": [1, 2, 3], "core": [2], "ignore": 3}, [3, 2], "region 'whole' lists the ignore label's value 3"),
])
def test_ignore_label_is_one_integer_in_no_region(labels: dict, order: list[int], message: str) -> None:
    with pytest.raises(DatasetError, match=rf"d.json: {message}"):
        parse_description(BASE | {"labels": {"background": 0, **labels}, "regions_class_order": order}, Path("d.json"))
    desc = parse_description(BASE | {"labels": {"background": 0, "whole": [1, 2], "core": [2], "ignore": 3},
                                     "regions_class_order": [1, 2]}, Path("d.json"))
    assert desc.ignore_label == 3 and desc.regions == [("whole", [1, 2]), ("core", [2])]


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": {"background": 1, "a": 0}}, 'labels must map "background" to 0: got 1; renumber the labels so '
     r'background is 0 and the classes 1, 2, ... \(in dataset.json and the label files\)$'),
    # a list (or other non-integer) was told to 'renumber the labels so background is 0'
    ({"labels": {"background": [0], "a": 1}}, r'labels must map "background" to 0: got \[0\]; it must be the integer 0, '
     r'not a list: write "background": 0$'),
    ({"labels": {"background": False, "a": 1}}, r'labels must map "background" to 0: got false; it must be the integer 0, '
     r'not true or false: write "background": 0$'),
    ({"labels": {"background": None, "a": 1}}, r'to 0: got null; it must be the integer 0, not null: write "background": 0$'),
    # labels written from 1, or background under another name: both said only '(got None)'
    ({"labels": {"a": 1, "b": 2}}, r'labels must map "background" to 0: it has no "background" entry; add "background": 0 '
     r"\(the label files' value for no structure\)$"),
    ({"labels": {"bg": 0, "a": 1}}, r"""labels must map "background" to 0: value 0 is named 'bg'; rename it "background"$"""),
    # nnU-Net v1's value -> name mapping: was 'labels must map "background" to 0 (got None)'
    ({"labels": {"0": "background", "1": "a", "2": "b", "3": "c"}}, r'labels maps values to names \(nnU-Net v1 '
     r'syntax\); write each name with its value: \{"background": 0, "a": 1, "b": 2, ...\}'),
    ({"labels": {"background": 0, "a": 1, "ignore": 1}}, "two labels share a value"),
    ({"labels": {"background": 0, "a": 2}}, r"consecutive integers 0..1, got \[0, 2\]"),
    ({"labels": {"background": 0, "ignore": 1, "a": 2, "b": 3}}, "the 'ignore' label must have the highest value; it is 1, "
     "below 3: give it 3 and renumber the classes above it down by one, in dataset.json and the label files"),
    ({"labels": {"background": 0, "a": "one"}}, "label 'a' has value 'one'"),
    # no class at all: verified, and fingerprint said 'no label map holds any of the classes ()'
    ({"labels": {"background": 0}}, r"labels declare no class, only background; declare the classes"),
    ({"labels": {"background": 0, "ignore": 1}}, r"labels declare no class, only background and the ignore label;"),
    ({"labels": {"background": 0, "a": 1.5}}, "label 'a' has value 1.5"),
    ({"labels": {"background": 0, "a": [True, 2], "b": [2]}, "regions_class_order": [1, 2]},
     r"label 'a' has value \[True, 2\]; use a non-negative integer or a list of positive integers"),  # passed as [1, 2]
    ({"numTraining": -1}, "numTraining must be a non-negative integer"),
    ({"numTraining": True}, "numTraining must be a non-negative integer, got True"),  # was 'numTraining is True but 4 ...'
    ({"numTraining": 3.5}, r'numTraining must be a non-negative integer, got 3.5; write the number of training cases '
     r'without quotes or a fraction, e.g. "numTraining": 4'),
    ({"numTraining": "3"}, "numTraining must be a non-negative integer, got '3'"),
    ({"numTraining": float("nan")}, "numTraining must be a non-negative integer, got nan"),
    # an empty name passed verify: reports and evaluate's table showed a class or channel with no name
    ({"labels": {"background": 0, "": 1}}, r"""d.json: the label of value 1 has an empty name ''; give it a name, e.g. "tumor": 1$"""),
    ({"labels": {"background": 0, "a": 1, " ": 2}}, r"the label of value 2 has an empty name ' '"),
    ({"channel_names": {"0": "CT", "1": ""}}, r"""d.json: channel_names\["1"\] is empty \(''\); give it a name, e.g. "1": "CT"$"""),
    ({"file_ending": "nii.gz"}, """file_ending must start with '.', got 'nii.gz'; write "file_ending": ".nii.gz"$"""),
    ({"file_ending": None}, """file_ending must start with '.', got None; write "file_ending": ".nii.gz"$"""),
    ({"channel_names": {"1": "CT"}}, "channel_names keys must be 0, 1, 2"),
    # files _0000 and _0002 declared as such were told the keys must be 0, 1, 2 'in order', with no fix
    ({"channel_names": {"0": "CT", "2": "PET"}}, r"""d.json: channel_names keys must be 0, 1, 2, ... without gaps \(channel """
     r"""k is the files' _000k suffix\); got \['0', '2'\]: number the 2 channel\(s\) "0", "1" and rename the image files' """
     "suffixes to match$"),
    # a name that is no string was read as its repr ("['CT']") and normalised by z-score, never as CT
    ({"channel_names": {"0": ["CT"]}}, r"""channel_names\["0"\] is \['CT'\], not a name; write the modality as a string"""),
    ({"channel_names": {"0": "CT", "1": None}}, r'channel_names\["1"\] is None, not a name'),
    ({"dataset": []}, r'"dataset" must map each case id to its files, like .* \(got a list\)'),
    # a superscript digit passes str.isdigit() but not int(): both ended in an internal ValueError
    ({"labels": {"background": 0, "a": "\u00b9"}}, "label 'a' has value '\u00b9'"),
    ({"channel_names": {"0": "CT", "\u00b9": "MR"}}, "channel_names keys must be 0, 1, 2"),
    ({"dataset": "cases.json"}, r'"dataset" must map each case id to its files, like .* \(got a str\)'),
    # a newline in a name broke evaluate's terminal table
    ({"labels": {"background": 0, "left\nlung": 1}}, r"label name 'left\\nlung' holds a control character"),
    ({"channel_names": {"0": "CT\t"}}, r"""channel_names\["0"\] 'CT\\t' holds a control character \(a newline, tab or"""),
])
def test_bad_descriptions(change: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_description(BASE | change, Path("d.json"))


def test_regions_class_order_is_read_as_integers() -> None:
    """[1.0, 2.0] was kept as floats (recorded in the plans, shown in reports as 1.0, 2.0) and [true, 2] passed as
    [1, 2]: whole floats are now integers and true is refused."""
    regions = BASE | {"labels": {"background": 0, "a": [1, 2], "b": [2]}}
    order = parse_description(regions | {"regions_class_order": [1.0, 2.0]}, Path("d.json")).regions_class_order
    assert order == [1, 2] and all(type(value) is int for value in order)
    with pytest.raises(DatasetError, match="d.json: regions_class_order gives region 'a' the value True, not one of its labels"):
        parse_description(regions | {"regions_class_order": [True, 2]}, Path("d.json"))


def test_whole_float_num_training_is_accepted() -> None:
    """nnU-Net accepts "numTraining": 3.0 (as some JSON writers emit it); it was refused as not an integer."""
    desc = parse_description(BASE | {"numTraining": 3.0}, Path("d.json"))
    assert desc.num_training == 3 and type(desc.num_training) is int


def test_label_values_are_read_as_nnunet_reads_them() -> None:
    """nnU-Net v2 converts label values with int() and calls a dataset region-based only when a label lists
    several values: its datasets switch with no conversion."""
    written = parse_description(BASE | {"labels": {"background": "0", "a": "1", "b": 2.0}}, Path("d.json"))
    assert written.labels == {"background": 0, "a": 1, "b": 2} and not written.has_regions
    single = parse_description(BASE | {"labels": {"background": 0, "a": [1], "b": [2]}}, Path("d.json"))
    assert single.labels == {"background": 0, "a": 1, "b": 2} and not single.has_regions
    regions = parse_description(BASE | {"labels": {"background": 0, "whole": ["1", 2], "core": [2]},
                                        "regions_class_order": [1, 2]}, Path("d.json"))
    assert regions.regions == [("whole", [1, 2]), ("core", [2])]


def test_regions_class_order_of_class_labels_is_ignored_as_nnunet_ignores_it() -> None:
    """Plain class labels with a stray regions_class_order were planned as region-based (vox2vox refused),
    trained with softmax and predicted with sigmoid regions: 'IndexError: list index out of range'."""
    classes = parse_description(BASE | {"labels": {"background": 0, "a": 1, "b": 2}, "regions_class_order": [1, 2]},
                                Path("d.json"))
    assert classes.regions_class_order is None and not classes.has_regions
    one_value_regions = parse_description(BASE | {"labels": {"background": 0, "a": [1], "b": [2]},
                                                  "regions_class_order": [1, 2]}, Path("d.json"))
    assert one_value_regions.regions_class_order == [1, 2] and one_value_regions.has_regions


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.json: not found"):
        load_description(tmp_path)


@pytest.mark.parametrize(("encoding", "saved_as"), [("utf-8-sig", r"UTF-8 with a byte-order mark \(BOM\)"),
                                                    ("utf-16", "UTF-16")])
def test_a_byte_order_mark_is_named_with_how_to_save_the_file(tmp_path: Path, encoding: str, saved_as: str) -> None:
    """A Windows editor's BOM was refused as 'is not valid JSON (...); fix the syntax', though the syntax was right."""
    (tmp_path / "dataset.json").write_text(json.dumps(BASE), encoding=encoding)
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'dataset.json'}: saved as {saved_as}, which JSON readers "
                                           r"\(nnU-Net's too\) refuse; save it as UTF-8 without BOM"):
        load_description(tmp_path)


def test_a_dataset_json_in_latin_1_is_named_as_not_utf_8(tmp_path: Path) -> None:
    """A label name with an accent saved as Latin-1 was refused as 'is not valid JSON (...); fix the syntax'."""
    (tmp_path / "dataset.json").write_bytes(json.dumps(BASE | {"name": "Lésion"}, ensure_ascii=False).encode("latin-1"))
    offset = json.dumps(BASE | {"name": "L"}).index('"L"') + 2
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'dataset.json'}: is not UTF-8 text \(byte 0xe9 at offset {offset}\): "
                                           r"save it as UTF-8 if an editor wrote it in another encoding \(Latin-1, "
                                           r"Windows-1252\); else fix the syntax$"):
        load_description(tmp_path)


def test_explicit_case_list(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for name in ("x_ct.nii.gz", "x_pet.nii.gz", "x_seg.nii.gz"):
        (tmp_path / "imgs" / name).write_bytes(b"")
    cases = {"x": {"images": ["imgs/x_ct.nii.gz", "imgs/x_pet.nii.gz"], "label": "imgs/x_seg.nii.gz"},
             "y": {"images": ["imgs/y_ct.nii.gz", "imgs/y_pet.nii.gz"], "label": "imgs/y_seg.nii.gz"}}
    (tmp_path / "dataset.json").write_text(json.dumps(BASE | {"dataset": cases}))
    scan = scan_training_cases(tmp_path, load_description(tmp_path))
    assert [c.case_id for c in scan.cases] == ["x"] and scan.cases[0].label == tmp_path / "imgs" / "x_seg.nii.gz"
    assert len(scan.problems) == 3 and "y_ct.nii.gz: file listed for case y in dataset.json does not exist" in scan.problems[0]


@pytest.mark.parametrize(("entry", "problem"), [
    # was iterated letter by letter: 'case x lists 16 images, channel_names has 2'
    ({"images": "imgs/x_ct.nii.gz", "label": "imgs/x_seg.nii.gz"}, "'images' is a str, not a list of paths"),
    # these said only "needs 'images' (list) and 'label'", not which was missing or wrong
    ({"images": ["imgs/x_ct.nii.gz"]}, "it has no 'label'"),
    ({}, "it has no 'images' and no 'label'"),
    (["imgs/x_ct.nii.gz"], "it is a list, not an object"),
    # an empty label path named the dataset folder itself, which exists
    ({"images": ["imgs/x_ct.nii.gz"], "label": ""}, "each path must be a non-empty string"),
])
def test_an_explicit_case_entry_names_what_is_wrong(tmp_path: Path, entry: object, problem: str) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps(BASE | {"dataset": {"x": entry}}))
    scan = scan_training_cases(tmp_path, load_description(tmp_path))
    assert scan.problems == [f"{tmp_path / 'dataset.json'}: entry 'dataset.x' needs 'images' (list) and 'label': {problem}; "
                             'write e.g. {"images": ["imagesTr/x_0000.nii.gz"], "label": "labelsTr/x.nii.gz"}']


def test_shared_brats_regions_and_drive_colour_channels_are_read_as_declared() -> None:
    """The shared BraTS (2 channels, nested regions) and DRIVE (one RGB PNG per case) datasets."""
    brats = load_description(SHARED_DATA / "Dataset905_BraTS2015Mini")
    assert brats.has_regions and brats.regions_class_order == [2, 1, 4] and brats.num_channels == 2
    assert brats.regions == [("whole_tumor", [1, 2, 3, 4]), ("tumor_core", [1, 3, 4]), ("enhancing_tumor", [4])]
    assert brats.label_values == [0, 1, 2, 3, 4] and brats.num_output_channels == 3
    drive_dir = SHARED_DATA / "Dataset906_DRIVE"
    drive = load_description(drive_dir)
    scan = scan_training_cases(drive_dir, drive)
    assert not scan.problems and len(scan.cases) == 20 and drive.num_channels == 3
    assert all(case.images == [drive_dir / "imagesTr" / f"{case.case_id}_0000.png"] for case in scan.cases)


@pytest.mark.parametrize(("text", "location"), [
    ('"labels": {"background": 0, "\\ud800x": 1, "b": 2}', r'labels\["\\ud800x"\] \(the key\)'),
    ('"labels": {"background": 0, "a": 1, "b": 2}, "name": "x\\udfff"', r"name"),
])
def test_a_lone_surrogate_escape_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, location: str) -> None:
    """Such a label name passed verify, then evaluate wrote summary.json and failed with an internal
    UnicodeEncodeError (no UTF-8 text holds half of a UTF-16 pair)."""
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "numTraining": 2, "file_ending": ".nii.gz", '
                                           f"{text}}}")
    with pytest.raises(DatasetError, match=rf"dataset\.json: {location} holds a lone surrogate escape"):
        load_description(tmp_path)
    pair = '"labels": {"background": 0, "\\ud83d\\ude00": 1}'  # a whole surrogate pair is one character
    (tmp_path / "dataset.json").write_text(f'{{"channel_names": {{"0": "CT"}}, "numTraining": 2, "file_ending": ".nii.gz", {pair}}}')
    assert load_description(tmp_path).class_names == {1: "\U0001f600"}


@pytest.mark.parametrize(("text", "message"), [
    ('"channel_names": {"0": "CT", "0": "MRI"}, "labels": {"background": 0, "a": 1}',
     r'gives the key "0" twice in one object, as "CT" and "MRI"'),
    ('"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumor": 1, "tumor": 2}',
     r'gives the key "tumor" twice in one object, as 1 and 2'),
])
def test_a_key_given_two_values_is_refused_naming_both(tmp_path: Path, text: str, message: str) -> None:
    """JSON readers keep the last value: one channel was silently lost (read as MRI, not CT), and a class pasted
    twice was refused as 'label values must be consecutive integers 0..1, got [0, 2]', of a file that holds 1."""
    (tmp_path / "dataset.json").write_text(f'{{{text}, "numTraining": 2, "file_ending": ".nii.gz"}}')
    with pytest.raises(DatasetError, match=rf"dataset\.json: {message}; a JSON reader keeps only the last: remove or rename one$"):
        load_description(tmp_path)
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "a": 1}, '
                                           '"numTraining": 2, "file_ending": ".nii.gz"}')
    assert load_description(tmp_path).labels == {"background": 0, "a": 1}  # the same value twice loses nothing


@pytest.mark.parametrize(("labels", "named", "value"), [
    ({"background": 0, "a": [1, 4000000000], "b": [4000000000]}, "a", 4000000000),
    ({"background": 0, "a": [1, 2], "b": [2], "ignore": 40000}, "ignore", 40000),
])
def test_a_label_value_beyond_16_bits_is_refused(tmp_path: Path, labels: dict, named: str, value: int) -> None:
    """A region of value 4000000000 passed verify, and fingerprint ran out of memory counting voxels per value up to
    it ('retry with fewer workers'); a value beyond 32767 would wrap around in the 16-bit preprocessed label maps."""
    data = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz",
            "regions_class_order": [1, 2]}
    with pytest.raises(DatasetError) as info:
        parse_description(data, tmp_path / "dataset.json")
    assert str(info.value) == (f"{tmp_path / 'dataset.json'}: label '{named}' holds the value {value}, beyond 32767 "
                               "(preprocessed label maps are 16-bit integers); renumber it, in dataset.json and the "
                               "label files, to a small integer")
    labels_at_the_bound = {"background": 0, "a": [1, 32767], "b": [32767]}
    assert parse_description({**data, "labels": labels_at_the_bound, "regions_class_order": [1, 32767]},
                             tmp_path / "dataset.json").regions == [("a", [1, 32767]), ("b", [32767])]
