"""End to end: synthetic cases → shards → an untrained or oracle U-Net → evaluation outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from distmis.data.convert import ConvertParams, convert_dataset
from distmis.data.info import DatasetInfo
from distmis.data.synthetic import synthesize_dataset
from distmis.errors import ContractError
from distmis.evaluate import run
from distmis.evaluate.restore import geometry_from_json, restore_to_source

pytestmark = pytest.mark.slow

SOURCE_SHAPE = (24, 24, 20)
STORED_SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    task = synthesize_dataset(root / "msd", 8, SOURCE_SHAPE, 3, progress=False)
    params = ConvertParams(shape=STORED_SHAPE, label_mode="regions", split=(0.5, 0.25, 0.25))
    convert_dataset(task, root / "tfrecords", params, workers=1, progress=False)
    return task, root / "tfrecords"


@pytest.fixture(scope="module")
def model_path(dataset, tmp_path_factory):
    import distmis.model  # noqa: F401 - legacy Keras before tensorflow
    from distmis.model.unet import build_unet

    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    build_unet((*STORED_SHAPE, 4), 3).save(path)
    (path.parent / "best_model.json").write_text(json.dumps({"trial": {"trial_id": "t007"}}))
    return path


def _test_cases(tfrecord_dir) -> list[dict]:
    info = DatasetInfo.from_dir(tfrecord_dir)
    return [c for c in info.raw["cases"] if c["split"] == "test"]


def test_untrained_model_writes_every_output(dataset, model_path, tmp_path):
    task, tfrecord_dir = dataset
    out = tmp_path / "eval"
    summary = run.evaluate_model(model_path, tfrecord_dir, out, overlay_cases=1)
    cases = _test_cases(tfrecord_dir)
    assert len(cases) == 2

    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case_id", "region", "dice", "hd95_mm"]
    assert sorted((r["case_id"], r["region"]) for r in rows) == sorted(
        (c["case_id"], region) for c in cases for region in ("WT", "TC", "ET")
    )
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert 0.0 <= float(row["hd95_mm"]) <= 373.13

    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert written["trial_id"] == "t007"
    assert written["threshold"] == 0.5
    assert set(written["regions"]) == {"WT", "TC", "ET"}
    assert written["regions"]["WT"]["dice"]["n"] == 2

    for case in cases:
        prediction = nib.load(out / "predictions" / f"{case['case_id']}.nii.gz")
        source = nib.load(task / "imagesTr" / f"{case['case_id']}.nii.gz")
        assert prediction.shape == SOURCE_SHAPE
        np.testing.assert_array_equal(prediction.affine, source.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
    overlays = sorted((out / "overlays").iterdir())
    assert [p.name for p in overlays] == [f"{cases[0]['case_id']}.png"]
    assert overlays[0].stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


class _Oracle:
    """Stands in for a model: returns each test image's own stored label as probabilities."""

    def __init__(self, tfrecord_dir):
        info = DatasetInfo.from_dir(tfrecord_dir)
        self.labels = {
            r.image.astype(np.float32).tobytes(): r.label.astype(np.float32)
            for r in run.iter_records(info, "test")
        }

    def __call__(self, image):
        return self.labels[np.asarray(image, dtype=np.float32).tobytes()]


def test_oracle_scores_perfectly_and_predictions_match_source_labels(
    dataset, model_path, tmp_path, monkeypatch
):
    task, tfrecord_dir = dataset
    monkeypatch.setattr(run, "_load_model", lambda path, backend: _Oracle(tfrecord_dir))
    out = tmp_path / "eval"
    summary = run.evaluate_model(model_path, tfrecord_dir, out, threshold=0.5, overlay_cases=0)
    for region in ("WT", "TC", "ET"):
        assert summary["regions"][region]["dice"]["mean"] == 1.0
        assert summary["regions"][region]["hd95_mm"]["mean"] == 0.0
    assert list((out / "overlays").iterdir()) == []
    for case in _test_cases(tfrecord_dir):
        geometry = geometry_from_json(case)
        # Voxels the conversion kept; the rest are background in any prediction.
        kept = restore_to_source(np.ones(STORED_SHAPE, dtype=bool), geometry)
        source = np.asarray(nib.load(task / "labelsTr" / f"{case['case_id']}.nii.gz").dataobj)
        predicted = np.asarray(nib.load(out / "predictions" / f"{case['case_id']}.nii.gz").dataobj)
        np.testing.assert_array_equal(predicted[kept], source[kept])
        assert not predicted[~kept].any()


def test_missing_inputs_name_the_file_and_rule(dataset, model_path, tmp_path):
    _, tfrecord_dir = dataset
    with pytest.raises(ContractError, match=r"nope\.keras is missing.*train_data_parallel"):
        run.evaluate_model(tmp_path / "nope.keras", tfrecord_dir, tmp_path / "out")
    with pytest.raises(ContractError, match=r"info\.json is missing.*index_tfrecords"):
        run.evaluate_model(model_path, tmp_path / "empty", tmp_path / "out")


@pytest.fixture(scope="module")
def twin_models(tmp_path_factory):
    """A Keras U-Net with non-trivial weights and the torch U-Net holding the same weights."""
    import distmis.model  # noqa: F401 - legacy Keras before tensorflow
    from distmis.model.unet import build_unet
    from distmis.torch_backend.checkpoint import save_model
    from distmis.torch_backend.unet import build_unet_torch
    from tests.test_torch_unet import _port_keras_weights

    architecture = {
        "in_channels": 4, "out_channels": 3, "depth": 2, "base_filters": 4, "norm": "batch"
    }  # fmt: skip
    keras_model = build_unet((*STORED_SHAPE, 4), 3, depth=2, base_filters=4, seed=5)
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


def _metrics(out) -> list[dict]:
    with (out / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


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
    cases = _test_cases(tfrecord_dir)
    rows = _metrics(out)
    assert sorted((r["case_id"], r["region"]) for r in rows) == sorted(
        (c["case_id"], region) for c in cases for region in ("WT", "TC", "ET")
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "torch" and summary["model"] == str(torch_path)
    assert summary["trial_id"] is None  # no card beside it
    assert summary["regions"]["ET"]["hd95_mm"]["n"] == len(cases)
    for case in cases:
        prediction = nib.load(out / "predictions" / f"{case['case_id']}.nii.gz")
        assert prediction.shape == SOURCE_SHAPE
    assert len(list((out / "overlays").iterdir())) == 1


def test_ported_torch_model_scores_as_its_keras_original(dataset, twin_models, tmp_path):
    _, tfrecord_dir = dataset
    keras_path, torch_path = twin_models
    keras_summary = run.evaluate_model(keras_path, tfrecord_dir, tmp_path / "k", overlay_cases=0)
    card = torch_path.parent / "best_model.json"
    card.write_text(
        json.dumps(
            {
                "backend": "torch",
                "model_file": "best_model.pt",
                "trial": {"trial_id": "t042"},
                "model": {"depth": 2, "base_filters": 4, "norm": "batch"},
                "tfrecord_dir": str(tfrecord_dir),
            }
        )
    )
    torch_summary = run.evaluate_model(card, tfrecord_dir, tmp_path / "t", overlay_cases=0)
    assert keras_summary["backend"] == "tensorflow" and torch_summary["backend"] == "torch"
    assert torch_summary["model"] == str(torch_path) and torch_summary["trial_id"] == "t042"
    # The nets' outputs agree to ~1e-6, so thresholding gives identical masks.
    assert _metrics(tmp_path / "t") == _metrics(tmp_path / "k")
    assert torch_summary["regions"] == keras_summary["regions"]
    dice_means = [keras_summary["regions"][r]["dice"]["mean"] for r in ("WT", "TC", "ET")]
    assert any(0.0 < d < 1.0 for d in dice_means)  # a non-trivial prediction, not all-empty
    for case in _test_cases(tfrecord_dir):
        name = f"predictions/{case['case_id']}.nii.gz"
        np.testing.assert_array_equal(
            np.asarray(nib.load(tmp_path / "t" / name).dataobj),
            np.asarray(nib.load(tmp_path / "k" / name).dataobj),
        )
    # The same card found beside the model file.
    assert run.resolve_model(torch_path) == (torch_path, "torch", card)


def test_bad_model_paths_and_cards_are_rejected(dataset, tmp_path):
    _, tfrecord_dir = dataset
    with pytest.raises(ValueError, match=r"\.keras or \.pt file or a \.json model card"):
        run.evaluate_model(tmp_path / "model.h5", tfrecord_dir, tmp_path / "out")
    with pytest.raises(ContractError, match=r"nope\.pt is missing.*train_data_parallel"):
        run.evaluate_model(tmp_path / "nope.pt", tfrecord_dir, tmp_path / "out")
    card = tmp_path / "best_model.json"
    card.write_text(json.dumps({"backend": "torch", "model_file": "best_model.keras"}))
    with pytest.raises(ContractError, match="backend 'torch' does not fit model_file"):
        run.resolve_model(card)
    card.write_text(json.dumps({"trial": {}}))
    with pytest.raises(ContractError, match=r"best_model\.json lacks 'backend'"):
        run.resolve_model(card)
