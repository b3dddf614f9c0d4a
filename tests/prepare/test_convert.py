"""Conversion end to end on tiny MSD folders, including every kind of bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from distmis.errors import CaseError, DatasetError
from distmis.prepare.convert import ConvertParams, convert_dataset, convert_shard, plan_conversion
from tests.conftest import random_case, write_case, write_dataset_json

SRC = Path(__file__).resolve().parents[2] / "src"
PARAMS = ConvertParams(shape=(16, 16, 16), label_mode="regions", shards=(2, 1, 1))


def read_with_plain_tf(
    files: list[str], label_channels: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode shards using only the schema documented in the README."""
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([4], tf.int64),
        "case_id": tf.io.FixedLenFeature([], tf.string),
    }
    out = {}
    for raw in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(raw, spec)
        shape = ex["shape"].numpy()
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.float32, little_endian=True), shape)
        label = tf.reshape(
            tf.io.decode_raw(ex["label"], tf.uint8), tf.concat([shape[:3], [label_channels]], 0)
        )
        out[ex["case_id"].numpy().decode()] = (image.numpy(), label.numpy())
    return out


def test_convert_writes_readable_shards_and_info(make_task, tmp_path):
    task = make_task(cases=8)
    out = tmp_path / "tfr"
    info = convert_dataset(task, out, PARAMS, workers=2, progress=False)
    assert {s: info["splits"][s]["count"] for s in info["splits"]} == {
        "train": 6,
        "val": 1,
        "test": 1,
    }
    assert info["image_shape"] == [16, 16, 16, 4] and info["label_shape"] == [16, 16, 16, 3]
    on_disk = json.loads((out / "info.json").read_text())
    assert on_disk == info
    for split in ("train", "val", "test"):
        for shard in info["splits"][split]["shards"]:
            data = (out / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    files = [str(out / s["file"]) for s in info["splits"]["train"]["shards"]]
    decoded = read_with_plain_tf(files, 3)
    assert len(decoded) == 6
    case_id, (image, label) = sorted(decoded.items())[0]
    source = nib.load(task / "labelsTr" / f"{case_id}.nii.gz").get_fdata().astype(np.uint8)
    # 20x18x14 → 16x16x16: crop 2/1 in x/y, pad 1 in z; the tumour sits in the centre.
    assert label[..., 0].sum() == (source > 0).sum()
    assert label[..., 2].sum() == (source == 3).sum()
    nonzero = image[..., 0][image[..., 0] != 0]
    assert abs(nonzero.mean()) < 1e-4 and abs(nonzero.std() - 1) < 1e-3
    geometry = next(c for c in info["cases"] if c["case_id"] == case_id)
    assert geometry["source_shape"] == [20, 18, 14] and geometry["crop_start"] == [2, 1, -1]
    assert info["skipped"] == []
    assert not list(out.glob(".*.tmp"))


def test_lps_case_converts_to_same_arrays_as_ras_twin(tmp_path):
    rng = np.random.default_rng(5)
    image, label = random_case(rng, (12, 10, 8))
    lps = np.array([[-1.0, 0, 0, 11], [0, -1.0, 0, 9], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    decoded = {}
    for name, arrays, affine in [
        ("ras", (image, label), np.eye(4)),
        ("lps", (image[::-1, ::-1], label[::-1, ::-1]), lps),
    ]:
        task = tmp_path / name / "Task01_BrainTumour"
        write_case(
            task,
            "BRATS_001",
            np.ascontiguousarray(arrays[0]),
            np.ascontiguousarray(arrays[1]),
            affine,
        )
        write_dataset_json(task, ["BRATS_001"])
        params = ConvertParams(shape=(8, 8, 8), split=(1.0, 0.0, 0.0), shards=(1, 1, 1))
        plan = plan_conversion(task, ConvertParams(shape=(8, 8, 8), split=(1.0, 0.0, 0.0)))
        assert plan["params"]["split"]["train"] == params.split[0]
        shard = tmp_path / name / "train.tfrecord"
        convert_shard(plan, "train", 0, shard)
        decoded[name] = read_with_plain_tf([str(shard)], 1)["BRATS_001"]
    np.testing.assert_array_equal(decoded["ras"][0], decoded["lps"][0])
    np.testing.assert_array_equal(decoded["ras"][1], decoded["lps"][1])


def test_split_fewer_cases_than_shards_is_refused(make_task):
    task = make_task(cases=4)
    with pytest.raises(DatasetError, match="data.preprocess.shards.test"):
        plan_conversion(task, ConvertParams(shape=(16, 16, 16), shards=(1, 1, 2)))


def _break(task: Path, kind: str) -> str:
    """Damage BRATS_002 in one way; return the expected message fragment."""
    image_path = task / "imagesTr" / "BRATS_002.nii.gz"
    label_path = task / "labelsTr" / "BRATS_002.nii.gz"
    if kind == "corrupt gzip":
        data = image_path.read_bytes()
        image_path.write_bytes(data[: len(data) // 2])
        return "cannot read BRATS_002.nii.gz"
    if kind == "missing label":
        label_path.unlink()
        return "label file"
    image = nib.load(image_path).get_fdata(dtype=np.float32)
    if kind == "wrong channels":
        nib.save(nib.Nifti1Image(image[..., :3], np.eye(4)), image_path)
        return "expected 4 channels"
    if kind == "grid mismatch":
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), label_path)
        return r"label grid \(10, 10, 10\) differs from image grid \(20, 18, 14\)"
    if kind == "nan":
        image[3, 3, 3, 1] = np.nan
        image[4, 4, 4, 2] = np.inf
        nib.save(nib.Nifti1Image(image, np.eye(4)), image_path)
        return "2 NaN/inf voxels"
    if kind == "affine mismatch":
        shifted = np.eye(4)
        shifted[0, 3] = 5.0
        label = np.asarray(nib.load(label_path).dataobj)
        nib.save(nib.Nifti1Image(label, shifted), label_path)
        return "affines disagree"
    raise AssertionError(kind)


BAD_KINDS = [
    "corrupt gzip",
    "missing label",
    "wrong channels",
    "grid mismatch",
    "nan",
    "affine mismatch",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_case_names_case_and_problem_and_leaves_no_shard(make_task, tmp_path, kind):
    task = make_task(cases=3)
    expected = _break(task, kind)
    params = ConvertParams(shape=(16, 16, 16), split=(1.0, 0.0, 0.0))
    plan = plan_conversion(task, params)
    shard = tmp_path / "out" / "train.tfrecord"
    with pytest.raises(CaseError, match=expected) as excinfo:
        convert_shard(plan, "train", 0, shard)
    assert excinfo.value.case_id == "BRATS_002"
    assert str(excinfo.value).startswith("case BRATS_002:")
    assert not shard.exists()
    assert list(shard.parent.iterdir()) == []


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_skip_bad_cases_records_them_and_goes_on(make_task, tmp_path, kind):
    task = make_task(cases=6)
    _break(task, kind)
    params = ConvertParams(shape=(16, 16, 16), shards=(1, 1, 1), skip_bad_cases=True)
    info = convert_dataset(task, tmp_path / "out", params, workers=1, progress=False)
    assert [s["case_id"] for s in info["skipped"]] == ["BRATS_002"]
    assert sum(info["splits"][s]["count"] for s in info["splits"]) == 5


def test_empty_images_dir_is_refused(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    write_dataset_json(task, [])
    with pytest.raises(DatasetError, match="holds no .nii.gz images"):
        plan_conversion(task, PARAMS)


def test_dataset_json_disagreeing_with_files_is_refused(make_task):
    task = make_task(cases=3)
    meta = json.loads((task / "dataset.json").read_text())
    meta["numTraining"] = 5
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining=5 but lists 3"):
        plan_conversion(task, PARAMS)
    meta["numTraining"] = 2
    meta["training"] = meta["training"][:2]
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="does not list 1 image.*BRATS_003"):
        plan_conversion(task, PARAMS)
    meta["training"].append(
        {"image": "./imagesTr/BRATS_009.nii.gz", "label": "./labelsTr/BRATS_009.nii.gz"}
    )
    meta["numTraining"] = 3
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="BRATS_009"):
        plan_conversion(task, PARAMS)


def test_junk_files_are_ignored(make_task, tmp_path):
    task = make_task(cases=6)
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    plan = plan_conversion(task, ConvertParams(shape=(16, 16, 16)))
    assert sum(len(e["cases"]) for s in plan["shards"].values() for e in s) == 6


def test_gzip_and_float16_shards(make_task, tmp_path):
    task = make_task(cases=6)
    params = ConvertParams(
        shape=(16, 16, 16), shards=(1, 1, 1), compression="gzip", image_dtype="float16"
    )
    info = convert_dataset(task, tmp_path / "out", params, workers=1, progress=False)
    shard = tmp_path / "out" / info["splits"]["train"]["shards"][0]["file"]
    assert shard.name.endswith(".tfrecord.gz")
    with gzip.open(shard) as fh:
        assert len(fh.read()) > 0
    raw = next(iter(tf.data.TFRecordDataset([str(shard)], compression_type="GZIP")))
    ex = tf.io.parse_single_example(raw, {"image": tf.io.FixedLenFeature([], tf.string)})
    assert len(ex["image"].numpy()) == 16 * 16 * 16 * 4 * 2


@pytest.mark.parametrize("kind", ["wrong channels", "grid mismatch", "nan"])
def test_cli_with_two_workers_names_the_bad_case_and_leaves_out_as_it_was(
    make_task, tmp_path, kind
):
    # The real CLI in a subprocess: the worker's CaseError must cross the process pool.
    task = make_task(cases=6)
    expected = _break(task, kind)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = [sys.executable, "-m", "distmis.cli", "convert", "--msd-dir", str(task)]
    command += ["--out", str(out), "--shape", "16", "16", "16", "--workers", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    message = run.stderr.strip().splitlines()[-1]
    assert re.search(f"^distmis convert: error: case BRATS_002: .*{expected}", message), message
    assert "Traceback" not in run.stderr and "BrokenProcessPool" not in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msd", "out"]  # no staging left


def test_a_good_conversion_replaces_its_files_and_keeps_others(make_task, tmp_path):
    task = make_task(cases=6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    params = ConvertParams(shape=(16, 16, 16))
    first = convert_dataset(task, out, params, progress=False)
    second = convert_dataset(task, out, params, workers=2, progress=False)
    assert first["splits"]["train"]["count"] == second["splits"]["train"]["count"]
    names = sorted(p.name for p in out.iterdir())
    assert "notes.txt" in names and "info.json" in names and "plan.json" in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msd", "out"]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_reconversion_gives_identical_bytes_with_one_or_two_workers(
    make_task, tmp_path, compression
):
    # The checksums in info.json key training's resume: an identical dataset must keep them.
    task = make_task(cases=8)
    params = ConvertParams(shape=(16, 16, 16), shards=(2, 1, 1), compression=compression)
    one = convert_dataset(task, tmp_path / "one", params, workers=1, progress=False)
    two = convert_dataset(task, tmp_path / "two", params, workers=2, progress=False)
    assert one["splits"] == two["splits"]
    for split in one["splits"].values():
        for shard in split["shards"]:
            ours = (tmp_path / "one" / shard["file"]).read_bytes()
            assert ours == (tmp_path / "two" / shard["file"]).read_bytes()
            assert hashlib.sha256(ours).hexdigest() == shard["sha256"]


def test_the_data_stage_never_imports_tensorflow(tmp_path):
    # A `tensorflow` that refuses to import, first on the path of the CLI and of every
    # process it spawns; the parent also checks its own sys.modules at the end.
    poison = tmp_path / "poison"
    for name in ("tensorflow", "tf_keras", "keras"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(
            f"raise ImportError('{name} imported by the data stage')\n"
        )
    code = (
        "import sys\n"
        "from distmis.cli import main\n"
        f"raw, tfr = {str(tmp_path / 'raw')!r}, {str(tmp_path / 'tfr')!r}\n"
        "for argv in (\n"
        "    ['synthesize', '--out', raw, '--cases', '6', '--shape', '20', '20', '18'],\n"
        "    ['convert', '--msd-dir', raw, '--out', tfr, '--shape', '16', '16', '16',\n"
        "     '--workers', '2', '--shards', '2', '1', '1', '--compression', 'gzip'],\n"
        "    ['inspect', tfr],\n"
        "):\n"
        "    assert main(argv) == 0, argv\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(SRC)])}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "imported by the data stage" not in run.stderr
    assert json.loads((tmp_path / "tfr" / "info.json").read_text())["compression"] == "gzip"
