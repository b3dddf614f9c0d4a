"""Pure array transforms applied to every case before it is written to a shard.

All functions take and return numpy arrays; shapes are stated as ``(X, Y, Z, C)``.
The geometry they record (:class:`Geometry`) is what evaluation needs to put a
prediction back into the source scan's space.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np

from distmis.prepare import resample
from distmis.prepare.task import LABEL_MODES


@dataclass(frozen=True)
class Geometry:
    """How a source case maps onto the stored array.

    ``source_shape`` and ``source_affine`` are the scan as stored on disk;
    ``orientation_transform`` is nibabel's ornt array taking source axes to RAS;
    ``resampled_shape`` is the RAS grid the scan was resampled to over the same field of view
    (:mod:`distmis.prepare.resample`), or None when it was not (``data.preprocess.resize: null``;
    also every info.json written before resizing existed). ``crop_start[i]`` is the index, in
    that grid (or the RAS scan's when not resampled), of stored voxel 0 along axis ``i``
    (negative means zero padding before the scan).
    """

    source_shape: tuple[int, int, int]
    source_affine: tuple[tuple[float, ...], ...]
    orientation_transform: tuple[tuple[float, float], ...]
    crop_start: tuple[int, int, int]
    resampled_shape: tuple[int, int, int] | None = None

    def to_json(self) -> dict:
        # Through JSON once so tuples become the lists a reader of info.json gets back.
        return json.loads(json.dumps(asdict(self)))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the first three axes to the closest canonical (RAS+) orientation.

    Works on ``(X, Y, Z)`` and ``(X, Y, Z, C)`` arrays; returns the view and the
    ornt transform (voxel data is not resampled, only permuted and flipped).
    """
    source_ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(
        source_ornt, nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    return nib.orientations.apply_orientation(array, transform), transform


def ras_spacing(
    affine: np.ndarray, transform: np.ndarray, shape: tuple[int, ...]
) -> tuple[float, float, float]:
    """Voxel size in mm along each RAS axis of a scan of ``shape`` reoriented by ``transform``."""
    ras_affine = np.asarray(affine) @ nib.orientations.inv_ornt_aff(transform, shape[:3])
    return tuple(float(size) for size in nib.affines.voxel_sizes(ras_affine))


def center_crop_start(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Start index per axis of a centred window (negative: pad before)."""
    return tuple((i - o) // 2 for i, o in zip(in_shape, out_shape, strict=True))


def crop_or_pad(
    array: np.ndarray, out_shape: tuple[int, int, int], start: tuple[int, ...]
) -> np.ndarray:
    """Window ``array`` to ``out_shape`` spatially, starting at ``start``; zeros outside.

    Trailing (channel) axes are kept. ``out[i] = array[i + start]`` where in range.
    """
    # Keep the source's memory order: NIfTI volumes load Fortran-ordered, where each
    # channel is contiguous, which makes the per-channel normalisation cheap. The one
    # layout change to channels-last C order happens once, at the very end.
    channel_major = array.ndim == 4 and abs(array.strides[3]) >= max(map(abs, array.strides[:3]))
    result = np.zeros(
        tuple(out_shape) + array.shape[3:], dtype=array.dtype, order="F" if channel_major else "C"
    )
    src, dst = _window_slices(array.shape[:3], out_shape, start)
    result[dst] = array[src]
    return result


def _window_slices(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], start: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``(source, destination)`` slices of the spatial window ``out[i] = array[i + start]``."""
    src, dst = [], []
    for size_in, size_out, s in zip(in_shape, out_shape, start, strict=True):
        lo, hi = max(s, 0), min(s + size_out, size_in)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    return tuple(src), tuple(dst)


# Voxels per channel that one slab of the fused normalisation works on: ~1 MB of float32,
# so a slab's temporaries stay in the core's cache while it is scaled, masked and moved.
_SLAB_VOXELS = 1 << 18


def zscore_window(
    image: np.ndarray,
    out_shape: tuple[int, int, int],
    start: tuple[int, ...],
    out_dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Crop/pad, z-score and lay out channels-last in two passes over the kept voxels.

    ``image`` is ``(X, Y, Z, C)`` in any memory order (NIfTI volumes load Fortran-ordered and
    reorientation gives a strided view); the window is ``out[i] = image[i + start]``, zeros
    outside the scan. Each channel is z-scored over its nonzero voxels *inside the window*
    (MRI background is exactly zero after skull stripping, so the statistics describe brain
    tissue only); zeros stay zero, and a channel with no nonzero voxel or zero spread is left
    as zeros rather than divided by zero. Returns a C-ordered ``out_shape + (C,)`` array in
    ``out_dtype``.

    How, and why: a statistics pass, then a pass that normalises z-slabs (in cache) and writes
    each as ``(z, c, x, y)`` planes (small 2D transposes) into a staging array, which one big
    2D transpose — ``(z·c) × (x·y)`` to ``(x·y) × (z·c)`` — turns into channels-last. numpy
    copies a direct Fortran → channels-last 4D permute element by element with 4-long inner
    loops (measured 0.86 s per BraTS volume); this way takes ~0.2 s.
    """
    src, dst = _window_slices(image.shape[:3], out_shape, start)
    window = image[src]
    wx, wy, wz, channels = window.shape
    covered = all(d.start == 0 and d.stop == n for d, n in zip(dst, out_shape, strict=True))
    shape = (*out_shape, channels)
    out = np.empty(shape, out_dtype) if covered else np.zeros(shape, out_dtype)
    if window.size == 0:
        return out
    step = max(1, _SLAB_VOXELS // (wx * wy))
    slabs = [slice(z, min(z + step, wz)) for z in range(0, wz, step)]
    scratch = np.empty((wx, wy, step), np.float32, order="F")

    # Statistics: float32 pairwise sums per slab, accumulated in float64 across slabs (within
    # 1e-8 of all-float64 sums on BraTS volumes, and ~30 % cheaper).
    count = np.zeros(channels, np.int64)
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for c in range(channels):
        for part in slabs:
            values = window[:, :, part, c]
            squared = scratch[:, :, : values.shape[2]]
            np.square(values, out=squared)
            count[c] += np.count_nonzero(values)
            total[c] += float(values.sum(dtype=np.float32))
            squares[c] += float(squared.sum(dtype=np.float32))
    mean = np.divide(total, count, out=np.zeros(channels), where=count > 0)
    variance = np.divide(squares, count, out=np.zeros(channels), where=count > 0) - mean**2
    std = np.sqrt(np.maximum(variance, 0.0))

    staging = np.empty((wz, channels, wx, wy), out_dtype)
    for part in slabs:
        for c in range(channels):
            target = staging[part, c]
            if not count[c] or std[c] == 0:
                target[...] = 0
                continue
            values = window[:, :, part, c]
            scaled = scratch[:, :, : values.shape[2]]
            np.subtract(values, np.float32(mean[c]), out=scaled)
            scaled *= np.float32(1.0 / std[c])
            np.multiply(scaled, values != 0, out=scaled)
            target[...] = scaled.transpose(2, 0, 1)
    laid_out = staging.reshape(wz * channels, wx * wy).T  # (x·y) × (z·c): channels-last
    if covered:
        np.copyto(out.reshape(wx * wy, wz * channels), laid_out)
    else:
        out[dst] = np.ascontiguousarray(laid_out).reshape(wx, wy, wz, channels)
    return out


def zscore_nonzero(image: np.ndarray, out_dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Z-score each channel of ``(X, Y, Z, C)`` over its nonzero voxels (no crop); see
    :func:`zscore_window`. Returns a C-ordered (channels-last) array in ``out_dtype``."""
    return zscore_window(image, image.shape[:3], (0, 0, 0), out_dtype)


def map_labels(label: np.ndarray, mode: str) -> np.ndarray:
    """Turn MSD labels ``(X, Y, Z)`` (0 bg, 1 edema, 2 NET, 3 ET) into ``(X, Y, Z, K)`` uint8."""
    if mode == "binary":
        return (label > 0)[..., None].astype(np.uint8)
    if mode == "regions":
        whole = label > 0
        core = (label == 2) | (label == 3)
        enhancing = label == 3
        return np.stack([whole, core, enhancing], axis=-1).astype(np.uint8)
    raise ValueError(f"unknown label mode {mode!r}; expected one of {sorted(LABEL_MODES)}")


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    out_shape: tuple[int, int, int],
    label_mode: str,
    image_dtype: np.dtype,
    resize: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Reorient to RAS, resample if asked, centre crop/pad to ``out_shape``, z-score, map labels.

    ``resize`` (the original DistMIS's ``--reshape``) resamples the RAS scan to that grid over
    the same field of view, the image linearly and the MSD label map by nearest neighbour
    (:mod:`distmis.prepare.resample`); None skips it. Returns C-ordered ``image (X, Y, Z, C)``
    in ``image_dtype``, ``label (X, Y, Z, K)`` uint8, and the geometry needed to undo the
    spatial steps.
    """
    image_ras, transform = to_ras(image, affine)
    label_ras, _ = to_ras(label, affine)
    if resize is not None:
        resize = tuple(int(n) for n in resize)
        # The labels are resampled as MSD values, before map_labels: one nearest-neighbour
        # pass whatever the label mode, and the regions made from it stay nested.
        spacing = ras_spacing(affine, transform, image.shape[:3])
        image_ras = resample.resample_image(image_ras, spacing, resize)
        label_ras = resample.resample_label(label_ras, spacing, resize)
    start = center_crop_start(image_ras.shape[:3], out_shape)
    # Crop, normalisation and the layout change in one pass over the kept voxels only.
    image_out = zscore_window(image_ras, out_shape, start, image_dtype)
    label_out = map_labels(crop_or_pad(label_ras, out_shape, start), label_mode)
    geometry = Geometry(
        source_shape=tuple(int(s) for s in image.shape[:3]),
        source_affine=tuple(tuple(float(v) for v in row) for row in affine),
        orientation_transform=tuple((float(a), float(b)) for a, b in transform),
        crop_start=tuple(int(s) for s in start),
        resampled_shape=resize,
    )
    return image_out, np.ascontiguousarray(label_out), geometry
