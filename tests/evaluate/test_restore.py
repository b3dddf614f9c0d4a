"""Stored arrays back to the source grid: a round trip through the real conversion transform."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from distmis.data.preprocess import map_labels, preprocess_case
from distmis.evaluate.restore import (
    geometry_from_json,
    ras_shape,
    ras_spacing,
    regions_to_msd_labels,
    restore_to_source,
    source_spacing,
    write_prediction_nifti,
)
from tests.evaluate.helpers import SOURCE_SHAPE, STORED_SHAPE, lps_affine, source_case


@pytest.mark.parametrize("mode", ["regions", "binary"])
def test_round_trip_reproduces_source_mask(mode):
    image, label = source_case()
    affine = lps_affine()
    _, stored, geometry = preprocess_case(
        image, label, affine, STORED_SHAPE, mode, np.dtype("float32")
    )
    # Through info.json's JSON form, as evaluation reads it.
    geometry = geometry_from_json(geometry.to_json())
    restored = restore_to_source(stored.astype(bool), geometry)
    assert restored.shape == (*SOURCE_SHAPE, stored.shape[-1])
    # The region masks conversion would make from the source label, on the source grid.
    np.testing.assert_array_equal(restored, map_labels(label, mode).astype(bool))
    expected_labels = label if mode == "regions" else (label > 0).astype(np.uint8)
    np.testing.assert_array_equal(regions_to_msd_labels(restored), expected_labels)


def test_restore_zeroes_cropped_voxels_and_keeps_kept_ones():
    image, _ = source_case()
    affine = lps_affine()
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


def test_shape_and_spacing_follow_the_axis_permutation():
    image, label = source_case()
    _, _, geometry = preprocess_case(
        image, label, lps_affine(), STORED_SHAPE, "binary", np.dtype("float32")
    )
    # Source voxel axes i, j, k are 1.25 mm (P), 0.875 mm (L), 2.5 mm (S); RAS x comes from j,
    # y from i, z from k.
    assert source_spacing(geometry) == (1.25, 0.875, 2.5)
    assert ras_spacing(geometry) == (0.875, 1.25, 2.5)
    assert ras_shape(geometry) == (11, 13, 9)


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
    image, label = source_case()
    affine = lps_affine()
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
