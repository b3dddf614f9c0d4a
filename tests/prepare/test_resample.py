"""Resampling a RAS grid over the same field of view, on an anisotropic, non-cubic LPS scan."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from distmis.prepare.preprocess import to_ras
from distmis.prepare.resample import (
    resample_image,
    resample_label,
    resampled_affine,
    resampled_spacing,
)

SHAPE = (20, 18, 10)
SPACING = (1.0, 1.5, 3.0)
# Down along X, up along Y, down along Z: every axis a different ratio, so a swap shows.
NEW_SHAPE = (10, 24, 4)


def lps_affine() -> np.ndarray:
    """Voxel axes i → world −x (L), j → world −y (P), k → z (S), spacing (1, 1.5, 3) mm."""
    affine = np.array(
        [
            [-1.0, 0.0, 0.0, 30.0],
            [0.0, -1.5, 0.0, 20.0],
            [0.0, 0.0, 3.0, -12.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    return affine


def ras_case(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (on the LPS grid) reoriented to RAS, and the RAS array's affine."""
    affine = lps_affine()
    ras, transform = to_ras(volume, affine)
    return ras, affine @ nib.orientations.inv_ornt_aff(transform, volume.shape[:3])


def world_points(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates ``shape + (3,)`` of every voxel centre of a grid."""
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def blob(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An MSD label map: nested ellipsoids 1 ⊃ 2 ⊃ 3 around an off-centre world point."""
    points = world_points(affine, shape)
    centre = world_points(affine, shape)[9, 8, 5] + np.array([0.3, -0.4, 0.5])
    radius = np.sqrt((((points - centre) / np.array([7.0, 8.0, 10.0])) ** 2).sum(axis=-1))
    label = np.zeros(shape, dtype=np.uint8)
    label[radius < 1.0] = 1
    label[radius < 0.6] = 2
    label[radius < 0.3] = 3
    return label


def test_spacing_and_affine_keep_the_field_of_view():
    _, affine = ras_case(np.zeros(SHAPE))
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), SPACING)
    assert resampled_spacing(SPACING, SHAPE, NEW_SHAPE) == (2.0, 1.125, 7.5)
    new_affine = resampled_affine(affine, SHAPE, NEW_SHAPE)
    np.testing.assert_allclose(nib.affines.voxel_sizes(new_affine), (2.0, 1.125, 7.5))
    # The outer corners of the grid (voxel faces, index −0.5 and n − 0.5) are the same world
    # points on both grids: the field of view is kept.
    for corner in itertools.product((0, 1), repeat=3):
        old = [-0.5 + c * n for c, n in zip(corner, SHAPE, strict=True)]
        new = [-0.5 + c * n for c, n in zip(corner, NEW_SHAPE, strict=True)]
        np.testing.assert_allclose(
            nib.affines.apply_affine(new_affine, new), nib.affines.apply_affine(affine, old)
        )


def test_image_linear_ramp_stays_the_same_ramp_inside():
    # Two channels, each a different linear function of the world point.
    coefficients = np.array([[0.5, -2.0, 0.25], [-1.0, 0.75, 3.0]])
    points = world_points(lps_affine(), SHAPE)
    image = np.stack([points @ c + 7.0 for c in coefficients], axis=-1).astype(np.float32)
    ras_image, affine = ras_case(image)
    out = resample_image(ras_image, SPACING, NEW_SHAPE)
    assert out.shape == (*NEW_SHAPE, 2) and out.dtype == np.float32
    new_points = world_points(resampled_affine(affine, SHAPE, NEW_SHAPE), NEW_SHAPE)
    expected = np.stack([new_points @ c + 7.0 for c in coefficients], axis=-1)
    # Inside: new centres between old centres on every axis (old continuous index in
    # [0, n − 1]); outside that band SimpleITK repeats the edge voxel.
    ratio = np.array(SHAPE) / np.array(NEW_SHAPE)
    old_index = [(np.arange(m) + 0.5) * r - 0.5 for m, r in zip(NEW_SHAPE, ratio, strict=True)]
    inside = np.ix_(*[(i >= 0) & (i <= n - 1) for i, n in zip(old_index, SHAPE, strict=True)])
    assert out[inside].size > 0.5 * out.size
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-4)


def test_label_nearest_neighbour_hand_computed_and_axes_not_swapped():
    # Each voxel carries its own (X, Y, Z) index, one axis per channel.
    index = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)
    out = resample_label(index.astype(np.int32), SPACING, NEW_SHAPE)
    assert out.shape == (*NEW_SHAPE, 3) and out.dtype == np.int32
    # New voxel i' samples old continuous index (i' + 0.5) · n / m − 0.5, rounded half up:
    # X 20 → 10: 2i' + 0.5 → 2i' + 1; Y 18 → 24: 0.75i' − 0.125; Z 10 → 4: 2.5i' + 0.75.
    expected_x = 2 * np.arange(10) + 1
    expected_y = np.floor(0.75 * np.arange(24) - 0.125 + 0.5).astype(int)
    expected_z = np.floor(2.5 * np.arange(4) + 0.75 + 0.5).astype(int)
    assert expected_y.tolist()[:6] == [0, 1, 1, 2, 3, 4]
    assert expected_z.tolist() == [1, 3, 6, 8]
    np.testing.assert_array_equal(out[:, 3, 2, 0], expected_x)
    np.testing.assert_array_equal(out[4, :, 1, 1], expected_y)
    np.testing.assert_array_equal(out[7, 20, :, 2], expected_z)


def test_labels_keep_source_values_and_nesting():
    ras_label, affine = ras_case(blob(lps_affine(), SHAPE))
    assert set(np.unique(ras_label)) == {0, 1, 2, 3}
    for new_shape in (NEW_SHAPE, (13, 11, 7), (32, 27, 16)):
        out = resample_label(ras_label, SPACING, new_shape)
        assert out.shape == new_shape and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1, 2, 3}
    masks = np.stack([ras_label > 0, ras_label >= 2, ras_label == 3], axis=-1)
    out = resample_label(masks, SPACING, (13, 11, 7))
    assert out.dtype == np.bool_ and out.shape == (13, 11, 7, 3)
    # Each channel sampled at the same points, so ET ⊂ TC ⊂ WT still holds voxel by voxel.
    assert not (out[..., 2] & ~out[..., 1]).any() and not (out[..., 1] & ~out[..., 0]).any()


def test_round_trip_by_halves_is_exactly_the_nearest_odd_voxel():
    label = blob(lps_affine(), SHAPE)
    coarse = resample_label(label, SPACING, (10, 9, 5))
    back = resample_label(coarse, resampled_spacing(SPACING, SHAPE, (10, 9, 5)), SHAPE)
    # Down by 2, voxel i' takes old voxel 2i' + 1; back up, old voxel i takes coarse i // 2.
    odd = [2 * (np.arange(n) // 2) + 1 for n in SHAPE]
    np.testing.assert_array_equal(back, label[np.ix_(*odd)])


def round_trip_maps(coarse_shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Per axis, the source index each voxel's value comes from after a round trip.

    Nearest neighbour on a grid aligned with the axes samples each axis on its own, so
    resampling a volume holding its own indices gives the maps (ties at exactly half a
    voxel are SimpleITK's floating-point business, so the maps are read, not predicted).
    """
    index = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)
    coarse = resample_label(index.astype(np.int32), SPACING, coarse_shape)
    back = resample_label(coarse, resampled_spacing(SPACING, SHAPE, coarse_shape), SHAPE)
    maps = [back[:, 0, 0, 0], back[0, :, 0, 1], back[0, 0, :, 2]]
    # Separable: every voxel's source index is (map_x[i], map_y[j], map_z[k]).
    np.testing.assert_array_equal(back, np.stack(np.meshgrid(*maps, indexing="ij"), axis=-1))
    return maps


# Measured 94.1 % and 95.5 % equal voxels; the bound from the geometry is checked below.
@pytest.mark.parametrize(("coarse_shape", "min_equal"), [((13, 11, 7), 0.94), ((16, 14, 8), 0.95)])
def test_round_trip_loses_only_boundary_voxels(coarse_shape, min_equal):
    ras_label, _ = ras_case(blob(lps_affine(), SHAPE))
    coarse = resample_label(ras_label, SPACING, coarse_shape)
    back = resample_label(coarse, resampled_spacing(SPACING, SHAPE, coarse_shape), SHAPE)
    maps = round_trip_maps(coarse_shape)
    np.testing.assert_array_equal(back, ras_label[np.ix_(*maps)])
    # Each nearest step moves a sample by at most half of its grid's voxel: in all under
    # 0.5 + 0.5 · n / m < 2 source voxels (n / m ≤ 18 / 11 here), so, indices being whole, at most
    # one voxel per axis. A voxel can change only where its 3×3×3 neighbourhood holds another
    # label: on a label boundary.
    for index_map, n in zip(maps, SHAPE, strict=True):
        assert np.abs(index_map - np.arange(n)).max() <= 1
    padded = np.pad(ras_label, 1, mode="edge")
    on_boundary = np.zeros(SHAPE, dtype=bool)
    for offset in itertools.product(range(3), repeat=3):
        window = tuple(slice(o, o + n) for o, n in zip(offset, SHAPE, strict=True))
        on_boundary |= padded[window] != ras_label
    changed = back != ras_label
    assert changed.any()
    assert not (changed & ~on_boundary).any()
    # That shell is 32 % of this tiny grid (three nested regions in 3600 voxels): a bound of
    # 68 % equal. Only the shell voxels whose sample crossed a boundary flip, far fewer.
    assert on_boundary.mean() < 0.33
    assert (~changed).mean() >= min_equal


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(X, Y, Z, C\)"):
        resample_image(np.zeros(SHAPE), SPACING, NEW_SHAPE)
    with pytest.raises(ValueError, match="three positive sizes"):
        resample_label(np.zeros(SHAPE, np.uint8), SPACING, (10, 0, 4))
