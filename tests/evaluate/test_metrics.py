"""Dice and HD95 against tiny hand-computed cases, with anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest

from distmis.evaluate.metrics import HD95_ONE_EMPTY_MM, dice, hd95, surface

SHAPE = (6, 7, 8)
SPACING = (1.0, 2.0, 3.0)


def _mask(*voxels: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    for voxel in voxels:
        mask[voxel] = True
    return mask


def test_dice_partial_overlap():
    pred = _mask((1, 1, 1), (1, 2, 1))
    ref = _mask((1, 2, 1), (1, 3, 1), (1, 4, 1))
    # 2·1 / (2 + 3)
    assert dice(pred, ref) == pytest.approx(0.4)


def test_dice_identical_and_disjoint():
    mask = _mask((2, 2, 2), (3, 2, 2))
    assert dice(mask, mask) == 1.0
    assert dice(mask, _mask((0, 0, 0))) == 0.0


def test_dice_empty_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(_mask((1, 1, 1)), empty) == 0.0
    assert dice(empty, _mask((1, 1, 1))) == 0.0


def test_hd95_single_voxels_along_anisotropic_axis():
    # 3 voxels apart along y, where a voxel is 2 mm: 6 mm.
    pred, ref = _mask((2, 1, 2)), _mask((2, 4, 2))
    assert hd95(pred, ref, SPACING) == pytest.approx(6.0)
    # The same offset along z (3 mm voxels) is 9 mm: the spacing is per axis.
    assert hd95(_mask((2, 2, 1)), _mask((2, 2, 4)), SPACING) == pytest.approx(9.0)


def test_hd95_shifted_line():
    # Two-voxel lines along y, shifted by one voxel (2 mm). Directed distances:
    # pred→ref [2, 0] and ref→pred [0, 2]; the 95th percentile (linear) of {0, 2} is 1.9.
    pred = _mask((2, 1, 2), (2, 2, 2))
    ref = _mask((2, 2, 2), (2, 3, 2))
    assert hd95(pred, ref, SPACING) == pytest.approx(1.9)


def test_hd95_takes_the_larger_directed_distance():
    # pred = ref plus one voxel 4 voxels away along z (3 mm voxels): ref→pred is [0, 0],
    # pred→ref is [0, 0, 12]; the 95th percentile (linear) of [0, 0, 12] is 0.9·12 = 10.8.
    ref = _mask((2, 2, 1), (2, 3, 1))
    pred = ref | _mask((2, 3, 5))
    assert hd95(pred, ref, SPACING) == pytest.approx(np.percentile([0.0, 0.0, 12.0], 95))
    assert hd95(pred, ref, SPACING) == pytest.approx(10.8)
    assert hd95(ref, pred, SPACING) == pytest.approx(10.8)


def test_hd95_identical_masks_is_zero():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    assert hd95(mask, mask, SPACING) == 0.0


def test_hd95_empty_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    assert hd95(empty, empty, SPACING) == 0.0
    assert hd95(_mask((1, 1, 1)), empty, SPACING) == HD95_ONE_EMPTY_MM == 373.13
    assert hd95(empty, _mask((1, 1, 1)), SPACING) == 373.13


def test_hd95_rejects_wrong_spacing_and_shapes():
    with pytest.raises(ValueError, match="spacing"):
        hd95(_mask((1, 1, 1)), _mask((1, 1, 1)), (1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


def test_surface_is_mask_minus_erosion():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 3×3×3 cube: only its centre voxel is interior
    expected = mask.copy()
    expected[2, 2, 2] = False
    np.testing.assert_array_equal(surface(mask), expected)
