from __future__ import annotations

import numpy as np
import pytest

from distmis.prepare import preprocess
from distmis.prepare.preprocess import (
    center_crop_start,
    crop_or_pad,
    map_labels,
    preprocess_case,
    to_ras,
    zscore_nonzero,
    zscore_window,
)

RAS = np.diag([1.0, 1.0, 1.0, 1.0])
# Same scanner grid stored in LPS order: x and y axes flipped, origin moved to the far corner.
LPS = np.array([[-1.0, 0, 0, 9.0], [0, -1.0, 0, 7.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def test_crop_or_pad_hand_computed():
    volume = np.arange(5 * 4 * 3).reshape(5, 4, 3)
    start = center_crop_start(volume.shape, (3, 6, 3))
    assert start == (1, -1, 0)
    out = crop_or_pad(volume, (3, 6, 3), start)
    assert out.shape == (3, 6, 3)
    np.testing.assert_array_equal(out[:, 0], 0)
    np.testing.assert_array_equal(out[:, 5], 0)
    np.testing.assert_array_equal(out[:, 1:5], volume[1:4])


def test_crop_or_pad_keeps_channels_and_memory_order():
    volume = np.asfortranarray(np.random.default_rng(0).random((6, 6, 6, 4), dtype=np.float32))
    out = crop_or_pad(volume, (4, 4, 8), center_crop_start(volume.shape[:3], (4, 4, 8)))
    assert out.shape == (4, 4, 8, 4)
    assert out.flags.f_contiguous
    np.testing.assert_array_equal(out[:, :, 1:7], volume[1:5, 1:5, :])


def test_zscore_nonzero_exact():
    image = np.zeros((2, 2, 1, 2), dtype=np.float32)
    image[..., 0] = [[[1.0], [3.0]], [[0.0], [0.0]]]  # nonzero values 1, 3: mean 2, std 1
    out = zscore_nonzero(image)
    np.testing.assert_allclose(out[..., 0].ravel(), [-1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[..., 1], 0)  # an all-zero channel stays zero


def _reference_zscore(window: np.ndarray) -> np.ndarray:
    """Crop first, then per-channel z-score over nonzero voxels, written the plain way."""
    out = np.zeros(window.shape, np.float64)
    for c in range(window.shape[3]):
        channel = window[..., c].astype(np.float64)
        values = channel[channel != 0]
        if values.size and values.std() > 0:
            out[..., c] = np.where(channel != 0, (channel - values.mean()) / values.std(), 0)
    return out


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("slab_voxels", [7, 1 << 18])  # many thin slabs, or one
def test_zscore_window_equals_crop_then_zscore(monkeypatch, order, slab_voxels):
    # Thin slabs exercise the slab bookkeeping along every layout; the window crops x, pads y
    # and both crops and shifts z, on a flipped (strided) view as to_ras gives for LPS.
    monkeypatch.setattr(preprocess, "_SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(2)
    volume = rng.normal(3.0, 2.0, size=(9, 5, 8, 3)).astype(np.float32)
    volume[rng.random(volume.shape) < 0.3] = 0
    volume[..., 2] = 0  # an empty channel stays zero
    volume = np.asarray(volume, order=order)[::-1, ::-1]
    out_shape, start = (6, 8, 5), (2, -2, 1)
    out = zscore_window(volume, out_shape, start, np.float32)
    assert out.shape == (6, 8, 5, 3) and out.flags.c_contiguous and out.dtype == np.float32
    expected = np.zeros((6, 8, 5, 3))
    expected[:, 2:7] = _reference_zscore(volume[2:8, :, 1:6])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    half = zscore_window(volume, out_shape, start, np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, expected, rtol=1e-3, atol=2e-3)


def test_map_labels_binary_and_regions():
    label = np.array([0, 1, 2, 3], dtype=np.uint8).reshape(4, 1, 1)
    np.testing.assert_array_equal(map_labels(label, "binary").ravel(), [0, 1, 1, 1])
    regions = map_labels(label, "regions").reshape(4, 3)
    np.testing.assert_array_equal(regions, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="unknown label mode"):
        map_labels(label, "multiclass")


def test_to_ras_undoes_lps_flip():
    ras_volume = np.arange(10 * 8 * 3).reshape(10, 8, 3)
    lps_volume = ras_volume[::-1, ::-1, :]
    reoriented, _ = to_ras(lps_volume, LPS)
    np.testing.assert_array_equal(reoriented, ras_volume)


def test_lps_case_preprocesses_to_same_arrays_as_ras_twin():
    rng = np.random.default_rng(1)
    image = rng.uniform(1, 2, (10, 8, 6, 4)).astype(np.float32)
    label = rng.integers(0, 4, (10, 8, 6)).astype(np.uint8)
    ras = preprocess_case(image, label, RAS, (8, 8, 8), "regions", np.dtype("<f4"))
    lps = preprocess_case(
        image[::-1, ::-1], label[::-1, ::-1], LPS, (8, 8, 8), "regions", np.dtype("<f4")
    )
    np.testing.assert_array_equal(ras[0], lps[0])
    np.testing.assert_array_equal(ras[1], lps[1])
    assert ras[0].flags.c_contiguous and ras[0].dtype == np.float32


def test_label_counts_preserved_inside_crop():
    label = np.zeros((12, 12, 12), dtype=np.uint8)
    label[4:8, 4:8, 4:8] = 1
    label[5:7, 5:7, 5:7] = 2
    label[6, 6, 6] = 3
    label[0, 0, 0] = 1  # outside the crop window: must be the only voxel lost
    image = np.ones((12, 12, 12, 4), dtype=np.float32)
    _, out, geometry = preprocess_case(image, label, RAS, (8, 8, 8), "regions", np.dtype("<f4"))
    assert geometry.crop_start == (2, 2, 2)
    assert out[..., 0].sum() == (label > 0).sum() - 1
    assert out[..., 1].sum() == ((label == 2) | (label == 3)).sum()
    assert out[..., 2].sum() == 1


def test_resize_resamples_the_ras_scan_before_the_centre_crop():
    # An LPS scan of 10 × 8 × 6 voxels of 1 × 1 × 2 mm; resized to 5 × 12 × 6, cropped to 4 × 8 × 8.
    affine = LPS @ np.diag([1.0, 1.0, 2.0, 1.0])
    image = np.zeros((10, 8, 6, 4), dtype=np.float32)
    image[..., 0] = np.arange(10, dtype=np.float32)[:, None, None] + 1  # a ramp along source i
    image[..., 1:] = 1.0
    label = np.zeros((10, 8, 6), dtype=np.uint8)
    label[2:8, 2:6, 1:5] = 1
    label[4:6, 3:5, 2:4] = 3
    out_image, out_label, geometry = preprocess_case(
        image, label, affine, (4, 8, 8), "regions", np.dtype("<f4"), resize=(5, 12, 6)
    )
    assert geometry.resampled_shape == (5, 12, 6)
    assert geometry.crop_start == center_crop_start((5, 12, 6), (4, 8, 8)) == (0, 2, -1)
    assert out_image.shape == (4, 8, 8, 4) and out_label.shape == (4, 8, 8, 3)
    assert out_image.flags.c_contiguous and out_label.flags.c_contiguous
    # LPS flips source i, so RAS x runs down the ramp; halving x averages voxel pairs.
    # RAS x = 0..4 holds (10 - 2x) - 0.5: 9.5, 7.5, 5.5, 3.5 (x = 4, 1.5, is cropped away).
    ramp = out_image[:, 3, 3, 0]
    np.testing.assert_allclose(np.diff(ramp), np.diff(ramp)[0], rtol=1e-5)
    assert np.diff(ramp)[0] < 0
    # Labels: nearest neighbour keeps MSD values, so the regions stay nested and binary.
    assert set(np.unique(out_label)) <= {0, 1}
    wt, tc, et = (out_label[..., k].astype(bool) for k in range(3))
    assert et.any() and not (et & ~tc).any() and not (tc & ~wt).any()
    # Zero padding along z (6 resampled slices into 8) is all background.
    np.testing.assert_array_equal(out_image[:, :, [0, 7]], 0)
    assert geometry.to_json()["resampled_shape"] == [5, 12, 6]


def test_no_resize_records_no_resampling_and_changes_nothing():
    rng = np.random.default_rng(2)
    image = rng.uniform(1, 2, (10, 8, 6, 4)).astype(np.float32)
    label = rng.integers(0, 4, (10, 8, 6)).astype(np.uint8)
    default = preprocess_case(image, label, LPS, (8, 8, 8), "regions", np.dtype("<f4"))
    explicit = preprocess_case(
        image, label, LPS, (8, 8, 8), "regions", np.dtype("<f4"), resize=None
    )
    assert default[2].resampled_shape is None and default[2] == explicit[2]
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(default[1], explicit[1])
    # Resizing to the RAS scan's own shape is the identity on the voxels.
    same = preprocess_case(
        image, label, LPS, (8, 8, 8), "regions", np.dtype("<f4"), resize=(10, 8, 6)
    )
    np.testing.assert_allclose(same[0], default[0], atol=1e-6)
    np.testing.assert_array_equal(same[1], default[1])
    assert same[2].crop_start == default[2].crop_start
