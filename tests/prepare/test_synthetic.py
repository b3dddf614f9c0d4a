"""Tests for the synthetic MSD Task01_BrainTumour stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from distmis.prepare import synthetic
from distmis.prepare.synthetic import sample_case_params, synthesize_case, synthesize_dataset

SHAPE = (24, 22, 18)
# Tiny, odd and anisotropic shapes, including the smallest allowed axis.
SHAPES = [(16, 16, 16), (16, 24, 20), (40, 40, 28), (33, 17, 21)]
FACE = ndimage.generate_binary_structure(3, 1)

# Expected sign of (region mean - healthy brain mean) per channel (FLAIR, T1w, t1gd, T2w).
EXPECTED_DIRECTION = {
    1: (+1, -1, -1, +1),  # edema
    2: (+1, -1, -1, +1),  # necrosis / non-enhancing
    3: (+1, -1, +1, +1),  # enhancing
}


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def _case_files(task: Path, stem: str) -> tuple[Path, Path]:
    return task / "imagesTr" / f"{stem}.nii.gz", task / "labelsTr" / f"{stem}.nii.gz"


def _head_mask(index: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    params = sample_case_params(index, shape, seed)
    i, j, k = np.indices(shape)
    (cx, cy, cz), (rx, ry, rz) = params.head_centre, params.head_radii
    return ((i - cx) / rx) ** 2 + ((j - cy) / ry) ** 2 + ((k - cz) / rz) ** 2 <= 1


def test_same_seed_gives_identical_case() -> None:
    first = synthesize_case(2, SHAPE, 7)
    second = synthesize_case(2, SHAPE, 7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seed_or_index_gives_different_case() -> None:
    image, label, _ = synthesize_case(0, SHAPE, 7)
    other_seed, _, _ = synthesize_case(0, SHAPE, 8)
    other_index, _, _ = synthesize_case(1, SHAPE, 7)
    assert not np.array_equal(image, other_seed)
    assert not np.array_equal(image, other_index)


def test_case_is_independent_of_dataset_size(tmp_path: Path) -> None:
    small = synthesize_dataset(tmp_path / "n3", 3, SHAPE, 11, progress=False)
    large = synthesize_dataset(tmp_path / "n5", 5, SHAPE, 11, progress=False)
    for index in range(3):
        stem = synthetic.case_id(index)
        expected_image, expected_label, _ = synthesize_case(index, SHAPE, 11)
        for task in (small, large):
            image_path, label_path = _case_files(task, stem)
            np.testing.assert_array_equal(_load(image_path)[0], expected_image)
            np.testing.assert_array_equal(_load(label_path)[0], expected_label)


def test_output_types_and_shapes() -> None:
    image, label, affine = synthesize_case(0, SHAPE, 3)
    assert image.shape == (*SHAPE, 4) and image.dtype == np.float32
    assert label.shape == SHAPE and label.dtype == np.uint8
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    np.testing.assert_array_equal(affine[:3, :3], np.eye(3))  # 1 mm isotropic, RAS
    np.testing.assert_array_equal(affine[3], [0, 0, 0, 1])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_tumour_regions_are_nested_and_all_present(shape: tuple[int, int, int], index: int) -> None:
    image, label, _ = synthesize_case(index, shape, 5)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
    necrosis = label == 2
    core = (label == 2) | (label == 3)
    whole = label > 0
    head = image[..., 0] != 0
    # One voxel around each region lies in the region enclosing it: the enhancing shell wraps
    # the necrosis, edema wraps the core, and brain wraps the whole tumour.
    assert np.all(core[ndimage.binary_dilation(necrosis, FACE)])
    assert np.all(whole[ndimage.binary_dilation(core, FACE)])
    assert np.all(head[ndimage.binary_dilation(whole, FACE)])


def test_all_labels_present_on_smallest_volumes() -> None:
    # Radii drawn in proportion to a tiny head are sub-voxel; the floors must keep every
    # region present in every case, not just on average.
    for index in range(50):
        _, label, _ = synthesize_case(index, (16, 16, 16), 13)
        assert np.all(np.bincount(label.ravel(), minlength=4)[1:] > 0), index


@pytest.mark.parametrize("shape", SHAPES)
def test_image_is_zero_exactly_outside_the_head(shape: tuple[int, int, int]) -> None:
    for index in range(3):
        image, _, _ = synthesize_case(index, shape, 9)
        head = _head_mask(index, shape, 9)
        for channel in range(4):
            np.testing.assert_array_equal(image[..., channel] != 0, head)
            assert np.all(image[..., channel][head] > 0)
        # The head never touches the volume border.
        assert not (head[[0, -1]].any() or head[:, [0, -1]].any() or head[:, :, [0, -1]].any())


def test_head_is_a_plausible_ellipsoid() -> None:
    shape = (60, 64, 48)
    for index in range(5):
        params = sample_case_params(index, shape, 1)
        fractions = params.head_radii / np.asarray(shape)
        assert np.all((fractions >= 0.35) & (fractions <= 0.45))
        voxels = _head_mask(index, shape, 1).sum()
        assert voxels == pytest.approx(4 / 3 * np.pi * np.prod(params.head_radii), rel=0.03)


@pytest.mark.parametrize("index", range(6))
def test_region_contrast_differs_from_brain_in_expected_direction(index: int) -> None:
    image, label, _ = synthesize_case(index, (40, 40, 28), 2)
    brain = (image[..., 0] != 0) & (label == 0)
    for channel in range(4):
        brain_mean = image[..., channel][brain].mean()
        region_means = {}
        for region, directions in EXPECTED_DIRECTION.items():
            region_means[region] = image[..., channel][label == region].mean()
            assert np.sign(region_means[region] - brain_mean) == directions[channel], (
                f"label {region}, channel {channel}"
            )
        if channel == 2:  # t1gd: enhancing shell is the brightest thing in the head
            assert region_means[3] > max(brain_mean, region_means[1], region_means[2])


def test_dataset_layout_and_json(tmp_path: Path) -> None:
    task = synthesize_dataset(tmp_path, 3, SHAPE, 4, progress=False)
    assert task == tmp_path / "Task01_BrainTumour"
    # Nothing but the task folder: the staging folder was renamed away.
    assert [p.name for p in tmp_path.iterdir()] == ["Task01_BrainTumour"]
    assert sorted(p.name for p in task.iterdir()) == [
        "dataset.json",
        "imagesTr",
        "imagesTs",
        "labelsTr",
        "source.json",
    ]
    assert list((task / "imagesTs").iterdir()) == []

    meta = json.loads((task / "dataset.json").read_text())
    stems = ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert meta["name"] == "BRATS"
    assert meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    }
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"] == [
        {"image": f"./imagesTr/{s}.nii.gz", "label": f"./labelsTr/{s}.nii.gz"} for s in stems
    ]
    for key in ("description", "reference", "licence", "release"):
        assert isinstance(meta[key], str) and meta[key]

    listed_images = {(task / e["image"]).resolve() for e in meta["training"]}
    listed_labels = {(task / e["label"]).resolve() for e in meta["training"]}
    assert listed_images == {p.resolve() for p in (task / "imagesTr").iterdir()}
    assert listed_labels == {p.resolve() for p in (task / "labelsTr").iterdir()}

    source = json.loads((task / "source.json").read_text())
    assert source == {
        "kind": "synthetic",
        "cases": 3,
        "shape": list(SHAPE),
        "seed": 4,
        "generator_version": 1,
    }


def test_nifti_read_back(tmp_path: Path) -> None:
    task = synthesize_dataset(tmp_path, 2, SHAPE, 6, progress=False)
    for index in range(2):
        image_path, label_path = _case_files(task, synthetic.case_id(index))
        image, image_nii = _load(image_path)
        label, label_nii = _load(label_path)
        expected_image, expected_label, expected_affine = synthesize_case(index, SHAPE, 6)

        assert image.shape == (*SHAPE, 4) and image.dtype == np.float32
        assert image_nii.header.get_data_dtype() == np.float32
        assert label.shape == SHAPE and label.dtype == np.uint8
        assert label_nii.header.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)

        np.testing.assert_array_equal(image_nii.affine, label_nii.affine)
        np.testing.assert_array_equal(image_nii.affine, expected_affine)
        for nii in (image_nii, label_nii):
            assert int(nii.header["qform_code"]) == 1
            assert int(nii.header["sform_code"]) == 1
            assert nii.header.get_zooms()[:3] == (1.0, 1.0, 1.0)


def test_parallel_workers_match_serial(tmp_path: Path) -> None:
    serial = synthesize_dataset(tmp_path / "serial", 3, SHAPE, 8, progress=False)
    parallel = synthesize_dataset(tmp_path / "parallel", 3, SHAPE, 8, progress=False, workers=2)
    for index in range(3):
        for a, b in zip(
            _case_files(serial, synthetic.case_id(index)),
            _case_files(parallel, synthetic.case_id(index)),
            strict=True,
        ):
            np.testing.assert_array_equal(_load(a)[0], _load(b)[0])
    assert (serial / "dataset.json").read_text() == (parallel / "dataset.json").read_text()


def test_rerun_replaces_existing_dataset(tmp_path: Path) -> None:
    synthesize_dataset(tmp_path, 3, SHAPE, 1, progress=False)
    task = synthesize_dataset(tmp_path, 2, SHAPE, 1, progress=False)
    assert json.loads((task / "dataset.json").read_text())["numTraining"] == 2
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == [
        "BRATS_001.nii.gz",
        "BRATS_002.nii.gz",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["Task01_BrainTumour"]


def test_failure_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesize_dataset(tmp_path, 2, SHAPE, 1, progress=False)
    before = (tmp_path / "Task01_BrainTumour" / "dataset.json").read_text()
    real_write = synthetic._write_case

    def flaky_write(task_dir: str, index: int, shape: tuple[int, int, int], seed: int) -> str:
        if index == 2:
            raise RuntimeError("disk full")
        return real_write(task_dir, index, shape, seed)

    monkeypatch.setattr(synthetic, "_write_case", flaky_write)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize_dataset(tmp_path, 4, SHAPE, 1, progress=False)
    # The earlier dataset is untouched and no staging folder is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["Task01_BrainTumour"]
    assert (tmp_path / "Task01_BrainTumour" / "dataset.json").read_text() == before
    assert len(list((tmp_path / "Task01_BrainTumour" / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cases": 0}, "cases must be >= 1"),
        ({"cases": -2}, "cases must be >= 1"),
        ({"shape": (15, 40, 40)}, "every shape axis must be >= 16"),
        ({"shape": (40, 40, 8)}, "every shape axis must be >= 16"),
        ({"shape": (40, 40)}, "shape must have 3 axes"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"workers": 0}, "workers must be >= 1"),
    ],
)
def test_bad_arguments_raise_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"cases": 2, "shape": SHAPE, "seed": 0, **kwargs}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        synthesize_dataset(out, progress=False, **args)  # type: ignore[arg-type]
    assert not out.exists()


def test_synthesize_case_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every shape axis must be >= 16"):
        synthesize_case(0, (16, 16, 15), 0)
    with pytest.raises(ValueError, match="case index must be >= 0"):
        synthesize_case(-1, SHAPE, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        synthesize_case(0, SHAPE, -3)
