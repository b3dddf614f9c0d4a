"""Stored arrays back to the source grid: a round trip through the real conversion transform."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from distmis.data.preprocess import preprocess_case
from distmis.evaluate.restore import (
    geometry_from_json,
    regions_to_msd_labels,
    restore_to_source,
    write_prediction_nifti,
)

# Odd, unequal axes so any swapped axis or off-by-one in the crop shows.
SOURCE_SHAPE = (13, 11, 9)
STORED_SHAPE = (8, 16, 6)  # in RAS (11, 13, 9): crops x and z, pads y


def _lps_affine() -> np.ndarray:
    """An LPS scan (x → left, y → posterior) with anisotropic voxels and an axis permutation.

    Values exact in float32, as any affine read from a NIfTI header is (the header stores
    float32), so the written file can be compared exactly.
    """
    # Voxel axes: i → world -y (P), j → world -x (L), k → world z (S): io_orientation is P, L, S.
    affine = np.array(
        [
            [0.0, -0.875, 0.0, 40.5],
            [-1.25, 0.0, 0.0, 55.0],
            [0.0, 0.0, 2.5, -30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert nib.aff2axcodes(affine) == ("P", "L", "S")
    return affine


def _source_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    image = rng.uniform(1.0, 2.0, size=(*SOURCE_SHAPE, 4)).astype(np.float32)
    label = np.zeros(SOURCE_SHAPE, dtype=np.uint8)
    # An asymmetric tumour near the centre, inside the kept window of every axis.
    label[5:9, 4:7, 3:6] = 1
    label[6:8, 4:6, 4:6] = 2
    label[6, 5, 4] = 3
    label[7, 4, 5] = 3
    return image, label


@pytest.mark.parametrize("mode", ["regions", "binary"])
def test_round_trip_reproduces_source_mask(mode):
    image, label = _source_case()
    affine = _lps_affine()
    _, stored, geometry = preprocess_case(
        image, label, affine, STORED_SHAPE, mode, np.dtype("float32")
    )
    # Through info.json's JSON form, as evaluation reads it.
    geometry = geometry_from_json(geometry.to_json())
    restored = restore_to_source(stored.astype(bool), geometry)
    assert restored.shape == (*SOURCE_SHAPE, stored.shape[-1])
    if mode == "regions":
        np.testing.assert_array_equal(restored[..., 0], label > 0)
        np.testing.assert_array_equal(restored[..., 1], np.isin(label, (2, 3)))
        np.testing.assert_array_equal(restored[..., 2], label == 3)
        np.testing.assert_array_equal(regions_to_msd_labels(restored), label)
    else:
        np.testing.assert_array_equal(restored[..., 0], label > 0)
        np.testing.assert_array_equal(regions_to_msd_labels(restored), (label > 0).astype(np.uint8))


def test_restore_zeroes_cropped_voxels_and_keeps_kept_ones():
    image, _ = _source_case()
    affine = _lps_affine()
    # Mark every source voxel with its own flat index: the restored array must equal the
    # source wherever the crop kept a voxel and be 0 where it did not.
    marker = np.arange(1, np.prod(SOURCE_SHAPE) + 1).reshape(SOURCE_SHAPE)
    ras = nib.orientations.apply_orientation(
        marker,
        nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
        ),
    )
    _, _, geometry = preprocess_case(
        image, np.zeros(SOURCE_SHAPE, np.uint8), affine, STORED_SHAPE, "binary", np.float32
    )
    start = geometry.crop_start
    stored = np.zeros(STORED_SHAPE, dtype=marker.dtype)
    for index in np.ndindex(STORED_SHAPE):
        source = tuple(i + s for i, s in zip(index, start, strict=True))
        if all(0 <= v < n for v, n in zip(source, ras.shape, strict=True)):
            stored[index] = ras[source]
    restored = restore_to_source(stored, geometry)
    kept = restored != 0
    np.testing.assert_array_equal(restored[kept], marker[kept])
    # Kept voxels = the stored window ∩ the scan, per axis.
    expected_kept = np.prod(
        [min(s + n, m) - max(s, 0) for s, n, m in zip(start, STORED_SHAPE, ras.shape, strict=True)]
    )
    assert int(kept.sum()) == expected_kept
    assert 0 < expected_kept < marker.size  # the test really crops


def test_regions_to_msd_labels_mapping():
    #               bg     edema   core    ET     ET outside TC/WT (prediction only)
    wt = np.array([False, True, True, True, False])
    tc = np.array([False, False, True, True, False])
    et = np.array([False, False, False, True, True])
    labels = regions_to_msd_labels(np.stack([wt, tc, et], axis=-1))
    assert labels.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 3]
    assert regions_to_msd_labels(wt[:, None]).tolist() == [0, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="channels"):
        regions_to_msd_labels(np.zeros((4, 2), bool))


def test_written_nifti_carries_source_affine_and_data(tmp_path):
    image, label = _source_case()
    affine = _lps_affine()
    _, stored, geometry = preprocess_case(
        image, label, affine, STORED_SHAPE, "regions", np.dtype("float32")
    )
    restored = restore_to_source(stored.astype(bool), geometry_from_json(geometry.to_json()))
    path = tmp_path / "pred" / "BRATS_001.nii.gz"
    write_prediction_nifti(path, regions_to_msd_labels(restored), geometry.source_affine)
    loaded = nib.load(path)
    assert loaded.shape == SOURCE_SHAPE
    assert loaded.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(loaded.affine, affine)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), label)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
