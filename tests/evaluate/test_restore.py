"""Stored arrays back to the source grid: a round trip through the real conversion transform."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from distmis.evaluate.restore import (
    geometry_from_json,
    ras_shape,
    ras_spacing,
    regions_to_msd_labels,
    restore_to_source,
    source_spacing,
    stored_grid_shape,
    stored_spacing,
    write_prediction_nifti,
)
from distmis.prepare.preprocess import map_labels, preprocess_case
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


# The hand-made case resized from RAS (11, 13, 9) down along x and y and up along z, then
# zero-padded along y: every step of the inverse is exercised.
RESIZE = (8, 10, 12)
RESIZED_STORED_SHAPE = (8, 12, 12)


def test_resized_prediction_restores_to_the_source_geometry(tmp_path):
    image, label = source_case()
    affine = lps_affine()
    source_path = tmp_path / "BRATS_001_label.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), source_path)
    _, stored, geometry = preprocess_case(
        image, label, affine, RESIZED_STORED_SHAPE, "regions", np.float32, resize=RESIZE
    )
    geometry = geometry_from_json(geometry.to_json())
    assert geometry.resampled_shape == RESIZE and geometry.crop_start == (0, -1, 0)
    # A perfect prediction made on the stored grid: the stored label itself.
    restored = restore_to_source(stored.astype(bool), geometry)
    assert restored.shape == (*SOURCE_SHAPE, 3) and restored.dtype == np.bool_
    path = tmp_path / "pred" / "BRATS_001.nii.gz"
    write_prediction_nifti(path, regions_to_msd_labels(restored), geometry.source_affine)

    written, source = sitk.ReadImage(str(path)), sitk.ReadImage(str(source_path))
    assert written.GetSize() == source.GetSize() == SOURCE_SHAPE
    assert written.GetSpacing() == source.GetSpacing() == (1.25, 0.875, 2.5)
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    # Down and back up by nearest neighbour moves a sample by under 2 source voxels per axis,
    # so only voxels next to another label can differ: 5 of the 1287 here.
    predicted = sitk.GetArrayFromImage(written).transpose(2, 1, 0)
    assert set(np.unique(predicted)) == {0, 1, 2, 3}
    assert int((predicted != label).sum()) == 5


def test_stored_grid_and_spacing_of_a_resized_case():
    image, label = source_case()
    _, _, plain = preprocess_case(image, label, lps_affine(), STORED_SHAPE, "binary", np.float32)
    assert stored_grid_shape(plain) == ras_shape(plain) == (11, 13, 9)
    assert stored_spacing(plain) == ras_spacing(plain) == (0.875, 1.25, 2.5)
    _, _, resized = preprocess_case(
        image, label, lps_affine(), RESIZED_STORED_SHAPE, "binary", np.float32, resize=RESIZE
    )
    assert stored_grid_shape(resized) == RESIZE
    # RAS spacing × RAS size / resized size: the field of view is the scan's.
    assert stored_spacing(resized) == (0.875 * 11 / 8, 1.25 * 13 / 10, 2.5 * 9 / 12)


def test_info_json_without_resampled_shape_still_loads():
    image, label = source_case()
    _, stored, geometry = preprocess_case(
        image, label, lps_affine(), STORED_SHAPE, "regions", np.float32
    )
    old_entry = geometry.to_json()
    assert old_entry.pop("resampled_shape") is None
    old = geometry_from_json(old_entry)
    assert old == geometry and old.resampled_shape is None
    np.testing.assert_array_equal(
        restore_to_source(stored.astype(bool), old), map_labels(label, "regions").astype(bool)
    )
