"""End to end: synthetic cases → shards → an untrained, ported or oracle U-Net → the outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from distmis import backends
from distmis.backends.tensorflow import TensorflowBackend
from distmis.errors import ContractError
from distmis.evaluate import run
from distmis.evaluate.metrics import dice, hd95
from distmis.evaluate.model import TrainedModel, resolve_model
from distmis.evaluate.restore import geometry_from_json, restore_to_source
from distmis.prepare.preprocess import map_labels
from distmis.shards.info import DatasetInfo
from tests.evaluate.helpers import (
    SYNTHETIC_SOURCE_SHAPE,
    SYNTHETIC_STORED_SHAPE,
    NotNested,
    Oracle,
    split_cases,
)
from tests.run_files import write_card

pytestmark = pytest.mark.slow

REGIONS = ("WT", "TC", "ET")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import distmis.backends.tensorflow  # noqa: F401 - legacy Keras before tensorflow
    from distmis.backends.tensorflow.unet import build_unet

    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    build_unet((*SYNTHETIC_STORED_SHAPE, 4), 3).save(path)
    write_card(path.parent, backend="tensorflow", model_file="best_model.keras", trial_id="t007")
    return path


@pytest.fixture
def oracle_model(dataset, tmp_path, monkeypatch):
    """A ``.keras`` path whose backend's predictor is the :class:`Oracle` of the test split."""
    _, tfrecord_dir = dataset
    oracle = Oracle(DatasetInfo.from_dir(tfrecord_dir))
    monkeypatch.setattr(TensorflowBackend, "predictor", lambda self, model_file: oracle)
    path = tmp_path / "oracle.keras"
    path.touch()  # never opened: only checked to be there
    return path


def _metrics(out) -> list[dict]:
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _case_region_pairs(tfrecord_dir) -> list[tuple[str, str]]:
    return sorted((c["case_id"], r) for c in split_cases(tfrecord_dir) for r in REGIONS)


def test_untrained_model_writes_every_output(dataset, model_path, tmp_path):
    task, tfrecord_dir = dataset
    out = tmp_path / "eval"
    summary = run.evaluate_model(model_path, tfrecord_dir, out, overlay_cases=1)
    cases = split_cases(tfrecord_dir)
    assert len(cases) == 2

    rows = _metrics(out)
    assert list(rows[0]) == ["case_id", "region", "dice", "hd95_mm"]
    assert sorted((r["case_id"], r["region"]) for r in rows) == _case_region_pairs(tfrecord_dir)
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert 0.0 <= float(row["hd95_mm"]) <= 373.13

    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    keys = "model backend trial_id tfrecord_dir split threshold cases regions hd95_one_empty_mm"
    assert list(written) == keys.split()
    assert written["model"] == str(model_path) and written["backend"] == "tensorflow"
    assert written["trial_id"] == "t007"
    assert written["tfrecord_dir"] == str(tfrecord_dir) and written["split"] == "test"
    assert written["threshold"] == 0.5 and written["cases"] == 2
    assert list(written["regions"]) == list(REGIONS)
    assert written["regions"]["WT"]["dice"]["n"] == 2
    assert written["hd95_one_empty_mm"] == "BraTS convention: 373.13 when exactly one mask is empty"

    for case in cases:
        prediction = nib.load(out / "predictions" / f"{case['case_id']}.nii.gz")
        source = nib.load(task / "imagesTr" / f"{case['case_id']}.nii.gz")
        assert prediction.shape == SYNTHETIC_SOURCE_SHAPE
        np.testing.assert_array_equal(prediction.affine, source.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
    overlays = sorted((out / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"{cases[0]['case_id']}.png"]
    assert overlays[0].stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_oracle_scores_perfectly_and_predictions_match_source_labels(
    dataset, oracle_model, tmp_path
):
    task, tfrecord_dir = dataset
    out = tmp_path / "eval"
    summary = run.evaluate_model(oracle_model, tfrecord_dir, out, threshold=0.5, overlay_cases=0)
    for region in REGIONS:
        assert summary["regions"][region]["dice"]["mean"] == 1.0
        assert summary["regions"][region]["hd95_mm"]["mean"] == 0.0
    assert summary["trial_id"] is None
    assert list((out / "overlays").iterdir()) == []
    for case in split_cases(tfrecord_dir):
        geometry = geometry_from_json(case)
        # Voxels the conversion kept; the rest are background in any prediction.
        kept = restore_to_source(np.ones(SYNTHETIC_STORED_SHAPE, dtype=bool), geometry)
        source = np.asarray(nib.load(task / "labelsTr" / f"{case['case_id']}.nii.gz").dataobj)
        predicted = np.asarray(nib.load(out / "predictions" / f"{case['case_id']}.nii.gz").dataobj)
        np.testing.assert_array_equal(predicted[kept], source[kept])
        assert not predicted[~kept].any()


def test_metrics_csv_scores_the_written_predictions_when_channels_are_not_nested(
    dataset, tmp_path, monkeypatch
):
    # What a BraTS tool does with the released files: read the written label map and the
    # source label, derive WT/TC/ET from both and score them on the source grid.
    task, tfrecord_dir = dataset
    predictor = NotNested(DatasetInfo.from_dir(tfrecord_dir))
    monkeypatch.setattr(TensorflowBackend, "predictor", lambda self, model_file: predictor)
    model = tmp_path / "not_nested.keras"
    model.touch()  # never opened: only checked to be there
    out = tmp_path / "eval"
    run.evaluate_model(model, tfrecord_dir, out, overlay_cases=0)
    rows = {(r["case_id"], r["region"]): r for r in _metrics(out)}
    assert sorted(rows) == _case_region_pairs(tfrecord_dir)
    for case in split_cases(tfrecord_dir):
        name = f"{case['case_id']}.nii.gz"
        source = nib.load(task / "labelsTr" / name)
        spacing = tuple(float(s) for s in nib.affines.voxel_sizes(source.affine))
        reference = map_labels(np.asarray(source.dataobj), "regions").astype(bool)
        written = np.asarray(nib.load(out / "predictions" / name).dataobj)
        predicted = map_labels(written, "regions").astype(bool)
        for channel, region in enumerate(REGIONS):
            pred, ref = predicted[..., channel], reference[..., channel]
            row = rows[(case["case_id"], region)]
            assert (row["dice"], row["hd95_mm"]) == (
                f"{dice(pred, ref):.6g}",
                f"{hd95(pred, ref, spacing):.6g}",
            ), f"{case['case_id']} {region}"
        # The raw WT channel is the reference TC: scoring it, not the file, would differ.
        whole, core = reference[..., 0], reference[..., 1]
        assert f"{dice(core, whole):.6g}" != rows[(case["case_id"], "WT")]["dice"]


def test_rerun_replaces_the_outputs_and_a_failed_run_keeps_them(dataset, oracle_model, tmp_path):
    _, tfrecord_dir = dataset
    out = tmp_path / "eval"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "BRATS_999.nii.gz").write_bytes(b"a case of an older run")
    (out / "overlays").mkdir()
    (out / "overlays" / "BRATS_999.png").write_bytes(b"an overlay of an older run")
    run.evaluate_model(oracle_model, tfrecord_dir, out, overlay_cases=2)
    names = {f"{c['case_id']}.nii.gz" for c in split_cases(tfrecord_dir)}
    assert {p.name for p in (out / "predictions").iterdir()} == names
    assert len(list((out / "overlays").iterdir())) == 2
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    calls = []

    def fails_on_the_second_case(self, model_file):
        def predict(image):
            calls.append(image)
            if len(calls) == 2:
                raise RuntimeError("out of memory")
            return np.zeros((*image.shape[:3], len(REGIONS)), dtype=np.float32)

        return predict

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TensorflowBackend, "predictor", fails_on_the_second_case)
        with pytest.raises(RuntimeError, match="out of memory"):
            run.evaluate_model(oracle_model, tfrecord_dir, out, overlay_cases=2)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # every file of the good run, byte for byte, and no staging left


def test_missing_inputs_name_the_file_and_rule(dataset, model_path, tmp_path):
    _, tfrecord_dir = dataset
    with pytest.raises(ContractError, match=r"nope\.keras is missing.*train_data_parallel"):
        run.evaluate_model(tmp_path / "nope.keras", tfrecord_dir, tmp_path / "out")
    with pytest.raises(ContractError, match=r"nope\.pt is missing.*train_data_parallel"):
        run.evaluate_model(tmp_path / "nope.pt", tfrecord_dir, tmp_path / "out")
    with pytest.raises(ContractError, match=r"info\.json is missing.*index_tfrecords"):
        run.evaluate_model(model_path, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written when an input is missing


def test_bad_arguments_are_rejected_before_any_output(dataset, model_path, tmp_path):
    _, tfrecord_dir = dataset
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\.keras or \.pt file or a \.json model card"):
        run.evaluate_model(tmp_path / "model.h5", tfrecord_dir, out)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 1\.0"):
        run.evaluate_model(model_path, tfrecord_dir, out, threshold=1.0)
    with pytest.raises(ValueError, match="overlay_cases must be >= 0, got -1"):
        run.evaluate_model(model_path, tfrecord_dir, out, overlay_cases=-1)
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train', 'val'\]"):
        run.evaluate_model(model_path, tfrecord_dir, out, split="tset")
    assert not out.exists()


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory):
    """A Keras U-Net with non-trivial weights and the torch U-Net holding the same weights."""
    import distmis.backends.tensorflow  # noqa: F401 - legacy Keras before tensorflow
    from distmis.backends.tensorflow.unet import build_unet
    from distmis.backends.torch.checkpoint import save_model
    from distmis.backends.torch.unet import build_unet_torch
    from tests.backends.torch.test_unet import _port_keras_weights

    architecture = {
        "in_channels": 4, "out_channels": 3, "depth": 2, "base_filters": 4, "norm": "batch"
    }  # fmt: skip
    keras_model = build_unet((*SYNTHETIC_STORED_SHAPE, 4), 3, depth=2, base_filters=4, seed=5)
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:  # BatchNorm statistics as after training
        if "_norm" in layer.name:
            layer.set_weights([w + rng.uniform(0.1, 0.5, w.shape) for w in layer.get_weights()])
    torch_model = build_unet_torch(**architecture)
    _port_keras_weights(keras_model, torch_model, depth=2)
    folder = tmp_path_factory.mktemp("twins")
    keras_model.save(folder / "twin.keras")
    save_model(folder / "best_model.pt", torch_model, architecture)
    return folder / "twin.keras", folder / "best_model.pt"


def test_torch_model_evaluates_end_to_end_without_tensorflow(dataset, twin_models, tmp_path):
    _, tfrecord_dir = dataset
    _, torch_path = twin_models
    out = tmp_path / "eval"
    # A fresh interpreter: this one has TensorFlow loaded already.
    code = (
        "import sys\n"
        "from distmis.evaluate.run import evaluate_model\n"
        f"evaluate_model({str(torch_path)!r}, {str(tfrecord_dir)!r}, {str(out)!r}, "
        "overlay_cases=1)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    rows = _metrics(out)
    assert sorted((r["case_id"], r["region"]) for r in rows) == _case_region_pairs(tfrecord_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["model"] == str(torch_path)
    assert summary["trial_id"] is None  # no card beside it
    assert summary["regions"]["ET"]["hd95_mm"]["n"] == len(split_cases(tfrecord_dir))
    for case in split_cases(tfrecord_dir):
        prediction = nib.load(out / "predictions" / f"{case['case_id']}.nii.gz")
        assert prediction.shape == SYNTHETIC_SOURCE_SHAPE
    assert len(list((out / "overlays").iterdir())) == 1


def test_ported_torch_model_scores_as_its_keras_original(dataset, twin_models, tmp_path):
    _, tfrecord_dir = dataset
    keras_path, torch_path = twin_models
    keras_summary = run.evaluate_model(keras_path, tfrecord_dir, tmp_path / "k", overlay_cases=0)
    card = write_card(torch_path.parent, trial_id="t042", tfrecord_dir=str(tfrecord_dir))
    torch_summary = run.evaluate_model(card, tfrecord_dir, tmp_path / "t", overlay_cases=0)
    assert keras_summary["backend"] == "tensorflow" and torch_summary["backend"] == "torch"
    assert torch_summary["model"] == str(torch_path) and torch_summary["trial_id"] == "t042"
    # The nets' outputs agree to ~1e-6, so thresholding gives identical masks.
    assert _metrics(tmp_path / "t") == _metrics(tmp_path / "k")
    assert torch_summary["regions"] == keras_summary["regions"]
    dice_means = [keras_summary["regions"][r]["dice"]["mean"] for r in REGIONS]
    assert any(0.0 < d < 1.0 for d in dice_means)  # a non-trivial prediction, not all-empty
    for case in split_cases(tfrecord_dir):
        name = f"predictions/{case['case_id']}.nii.gz"
        np.testing.assert_array_equal(
            np.asarray(nib.load(tmp_path / "t" / name).dataobj),
            np.asarray(nib.load(tmp_path / "k" / name).dataobj),
        )
    # The same card found beside the model file.
    assert resolve_model(torch_path) == TrainedModel(
        torch_path, backends.get("torch"), card, "t042"
    )
