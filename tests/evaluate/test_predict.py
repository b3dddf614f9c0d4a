"""One case and one split predicted and restored to the source grid; prediction NIfTI files."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from distmis import backends
from distmis.errors import ContractError
from distmis.evaluate.model import TrainedModel
from distmis.evaluate.predict import (
    case_geometries,
    label_map_and_regions,
    load_predictor,
    predict_case,
    predict_split,
    write_prediction,
)
from distmis.evaluate.restore import restore_to_source
from distmis.evaluate.score import case_rows
from distmis.prepare.preprocess import map_labels, preprocess_case
from distmis.shards.info import DatasetInfo
from distmis.shards.records import Record
from tests.evaluate.helpers import (
    SOURCE_SHAPE,
    STORED_SHAPE,
    SYNTHETIC_STORED_SHAPE,
    OracleBackend,
    lps_affine,
    source_case,
    split_cases,
)

REGIONS = ("WT", "TC", "ET")


def _stored_record():
    """The hand-made LPS case as conversion stores it (float16 image) and its geometry."""
    image, label = source_case()
    stored_image, stored_label, geometry = preprocess_case(
        image, label, lps_affine(), STORED_SHAPE, "regions", np.dtype("float16")
    )
    return Record("BRATS_001", stored_image, stored_label), label, geometry


class _Fixed:
    """A predictor returning 0.75 inside the stored label's regions and 0.5 elsewhere."""

    def __init__(self, label):
        self.probabilities = np.where(label.astype(bool), 0.75, 0.5).astype(np.float32)
        self.seen = []

    def __call__(self, image):
        self.seen.append(image.dtype)
        return self.probabilities


def test_predict_case_thresholds_strictly_and_restores_both_masks_to_source():
    record, source_label, geometry = _stored_record()
    predictor = _Fixed(record.label)
    case = predict_case(predictor, record, geometry, threshold=0.5)
    assert predictor.seen == [np.float32]  # the model gets float32 whatever the shards hold
    assert case.case_id == "BRATS_001" and case.geometry == geometry
    np.testing.assert_array_equal(case.predicted, record.label.astype(bool))  # 0.5 is not > 0.5
    np.testing.assert_array_equal(case.reference, record.label.astype(bool))
    # The tumour lies inside the kept window, so both masks are the source label's regions.
    source_regions = map_labels(source_label, "regions").astype(bool)
    assert case.source_predicted.shape == (*SOURCE_SHAPE, 3)
    np.testing.assert_array_equal(case.source_predicted, source_regions)
    np.testing.assert_array_equal(case.source_reference, source_regions)
    # At a higher threshold nothing passes (0.75 is not > 0.75); the reference stays.
    nothing = predict_case(predictor, record, geometry, threshold=0.75)
    assert not nothing.predicted.any() and not nothing.source_predicted.any()
    np.testing.assert_array_equal(nothing.source_reference, source_regions)


def test_write_prediction_writes_msd_labels_on_the_source_grid(tmp_path):
    record, source_label, geometry = _stored_record()
    case = predict_case(_Fixed(record.label), record, geometry, threshold=0.5)
    path = write_prediction(tmp_path / "predictions", case)
    assert path == tmp_path / "predictions" / "BRATS_001.nii.gz"
    written = nib.load(path)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, lps_affine())
    np.testing.assert_array_equal(np.asarray(written.dataobj), source_label)


def test_label_map_and_regions_nest_channels_with_inner_regions_winning():
    # x:                      0  1  2  3  4  5
    whole = np.array([0, 1, 1, 0, 0, 0], dtype=bool)
    core = np.array([0, 0, 1, 1, 0, 0], dtype=bool)  # x3 outside WT
    enhancing = np.array([0, 0, 0, 0, 1, 0], dtype=bool)  # x4 outside WT and TC
    label, regions = label_map_and_regions(np.stack([whole, core, enhancing], axis=-1))
    assert label.dtype == np.uint8 and label.tolist() == [0, 1, 2, 2, 3, 0]
    assert regions.dtype == bool
    assert regions.T.astype(int).tolist() == [
        [0, 1, 1, 1, 1, 0],  # WT: label > 0
        [0, 0, 1, 1, 1, 0],  # TC: label 2 or 3
        [0, 0, 0, 0, 1, 0],  # ET: label 3
    ]
    # Binary: the one channel is the label map's tumour, unchanged.
    label, regions = label_map_and_regions(whole[:, None])
    assert label.tolist() == [0, 1, 1, 0, 0, 0]
    np.testing.assert_array_equal(regions, whole[:, None])


class _OneChannelOut:
    """A predictor moving the stored label's regions one channel out, edema innermost.

    WT ← TC, TC ← ET, ET ← WT∖TC: predicted ET lies wholly outside predicted WT and TC.
    """

    def __init__(self, label):
        whole, core, enhancing = np.moveaxis(label.astype(bool), -1, 0)
        channels = np.stack([core, enhancing, whole & ~core], axis=-1)
        self.probabilities = channels.astype(np.float32)

    def __call__(self, image):
        return self.probabilities


def test_predict_case_scores_the_regions_of_the_written_map_when_channels_do_not_nest(tmp_path):
    record, source_label, geometry = _stored_record()
    case = predict_case(_OneChannelOut(record.label), record, geometry, threshold=0.5)
    # Source label: 28 edema (1), 6 non-enhancing core (2), 2 enhancing (3) voxels. Predicted
    # ET is the edema and wins there (3); TC is the reference ET (2); WT the rest of the core (1).
    moved = np.array([0, 3, 1, 2], dtype=np.uint8)[source_label]
    np.testing.assert_array_equal(case.source_label, moved)
    np.testing.assert_array_equal(case.source_predicted, map_labels(moved, "regions") > 0)
    # The overlays' stored-grid masks nest the same way: WT, ET ∪ edema, edema.
    whole, core, enhancing = np.moveaxis(record.label.astype(bool), -1, 0)
    edema = whole & ~core
    np.testing.assert_array_equal(
        case.predicted, np.stack([whole, enhancing | edema, edema], axis=-1)
    )
    rows = case_rows(
        "BRATS_001", case.source_predicted, case.source_reference, REGIONS, (1.0, 1.0, 1.0)
    )
    # WT: the whole tumour, 2·36 / (36 + 36). TC: edema ∪ ET (30) against the core (8), sharing
    # ET, 2·2 / (30 + 8). ET: the edema (28) against ET (2), disjoint. The raw channels would
    # have scored WT 2·8 / (8 + 36) and TC 2·2 / (2 + 8).
    assert [row["dice"] for row in rows] == [1.0, 2 / 19, 0.0]
    written = nib.load(write_prediction(tmp_path, case))
    np.testing.assert_array_equal(np.asarray(written.dataobj), case.source_label)


def test_load_predictor_names_a_missing_model_and_its_rule(tmp_path):
    model = TrainedModel(tmp_path / "nope.pt", backends.get("torch"), None, None)
    with pytest.raises(
        ContractError, match=r"nope\.pt is missing \(it is written by train_data_parallel"
    ):
        load_predictor(model)


def test_case_geometries_name_info_json_when_one_lacks_geometry(tmp_path):
    _, _, geometry = _stored_record()
    good = {"case_id": "BRATS_001", **geometry.to_json()}
    info = DatasetInfo(
        root=tmp_path,
        image_shape=(*STORED_SHAPE, 4),
        label_shape=(*STORED_SHAPE, 3),
        image_dtype="float16",
        compression="none",
        label_channels=("WT", "TC", "ET"),
        modalities=("FLAIR", "T1w", "t1gd", "T2w"),
        splits={},
        raw={"cases": [good]},
    )
    assert case_geometries(info) == {"BRATS_001": geometry}
    broken = {**good, "case_id": "BRATS_002"}
    del broken["crop_start"]
    info.raw["cases"].append(broken)
    with pytest.raises(
        ContractError, match=r"info\.json: cases\[\] lacks geometry .*crop_start.*index_tfrecords"
    ):
        case_geometries(info)


@pytest.mark.slow
def test_predict_split_yields_every_case_of_the_split_from_the_real_shards(dataset, tmp_path):
    task, tfrecord_dir = dataset
    info = DatasetInfo.from_dir(tfrecord_dir)
    model_file = tmp_path / "best_model.pt"
    model_file.touch()  # the oracle never opens it; load_predictor only checks it is there
    model = TrainedModel(model_file, OracleBackend(info), None, None)
    cases = list(predict_split(model, info, "test", threshold=0.5))
    assert sorted(c.case_id for c in cases) == sorted(
        c["case_id"] for c in split_cases(tfrecord_dir)
    )
    for case in cases:
        source_label = np.asarray(nib.load(task / "labelsTr" / f"{case.case_id}.nii.gz").dataobj)
        # Voxels the conversion kept; the rest are background in both masks.
        kept = restore_to_source(np.ones(SYNTHETIC_STORED_SHAPE, dtype=bool), case.geometry)
        expected = map_labels(source_label, "regions").astype(bool) & kept[..., None]
        np.testing.assert_array_equal(case.source_reference, expected)
        np.testing.assert_array_equal(case.source_predicted, expected)
        assert case.source_reference[..., 0].any()  # a real tumour, not two empty masks


@pytest.mark.slow
def test_predict_split_checks_the_split_and_each_case_s_geometry(dataset, tmp_path):
    _, tfrecord_dir = dataset
    info = DatasetInfo.from_dir(tfrecord_dir)
    missing = TrainedModel(tmp_path / "nope.pt", backends.get("torch"), None, None)
    # The split is checked before the model, so a bad split is the error reported.
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train', 'val'\]"):
        predict_split(missing, info, "tset", 0.5)
    with pytest.raises(ContractError, match=r"nope\.pt is missing"):
        predict_split(missing, info, "test", 0.5)

    copy = shutil.copytree(tfrecord_dir, tmp_path / "tfrecords")
    content = json.loads((copy / "info.json").read_text())
    dropped = split_cases(tfrecord_dir)[0]["case_id"]
    content["cases"] = [c for c in content["cases"] if c["case_id"] != dropped]
    (copy / "info.json").write_text(json.dumps(content))
    info = DatasetInfo.from_dir(copy)
    model_file = tmp_path / "best_model.pt"
    model_file.touch()
    cases = predict_split(
        TrainedModel(model_file, OracleBackend(info), None, None), info, "test", 0.5
    )
    with pytest.raises(
        ContractError, match=rf"info\.json: no cases\[\] entry for {dropped}; rerun"
    ):
        list(cases)
