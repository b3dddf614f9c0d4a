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

from distmis.data import resample

LABEL_MODES = {
    # The original DistMIS trained tumour-vs-background.
    "binary": ("tumour",),
    # BraTS evaluation regions, nested: ET ⊂ TC ⊂ WT.
    "regions": ("WT", "TC", "ET"),
}


@dataclass(frozen=True)
class Geometry:
    """How a source case maps onto the stored array.

    ``source_shape`` and ``source_affine`` are the scan as stored on disk;
    ``orientation_transform`` is nibabel's ornt array taking source axes to RAS;
    ``resampled_shape`` is the RAS grid the scan was resampled to over the same field of view
    (:mod:`distmis.data.resample`), or None when it was not (``data.preprocess.resize: null``;
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
    src, dst = [], []
    for size_in, size_out, s in zip(array.shape[:3], out_shape, start, strict=True):
        lo, hi = max(s, 0), min(s + size_out, size_in)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    result[tuple(dst)] = array[tuple(src)]
    return result


def zscore_nonzero(image: np.ndarray, out_dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Z-score each channel of ``(X, Y, Z, C)`` over its nonzero voxels; zeros stay zero.

    MRI background is exactly zero after skull stripping (BraTS), so the statistics
    describe brain tissue only. A channel with no nonzero voxel or zero spread is left
    as zeros rather than divided by zero. Returns a C-ordered (channels-last) array in
    ``out_dtype``: the layout change is fused into the normalisation.
    """
    out = np.empty(image.shape, dtype=out_dtype, order="C")
    for c in range(image.shape[3]):
        channel = image[..., c]
        mask = channel != 0
        count = int(np.count_nonzero(mask))
        # Zero voxels add nothing to the sums, so the statistics need no masked copy;
        # float64 accumulators keep them exact enough for ~10^7 voxels.
        total = float(channel.sum(dtype=np.float64))
        squares = float(np.einsum("ijk,ijk->", channel, channel, dtype=np.float64))
        mean = total / count if count else 0.0
        std = float(np.sqrt(max(squares / count - mean * mean, 0.0))) if count else 0.0
        if std == 0.0:
            out[..., c] = 0
            continue
        scaled = channel - np.float32(mean)
        scaled *= np.float32(1.0 / std)
        scaled *= mask
        out[..., c] = scaled
    return out


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
    (:mod:`distmis.data.resample`); None skips it. Returns C-ordered ``image (X, Y, Z, C)``
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
    # Crop first so normalisation and the layout copy touch only the kept voxels.
    image_out = zscore_nonzero(crop_or_pad(image_ras, out_shape, start), image_dtype)
    label_out = map_labels(crop_or_pad(label_ras, out_shape, start), label_mode)
    geometry = Geometry(
        source_shape=tuple(int(s) for s in image.shape[:3]),
        source_affine=tuple(tuple(float(v) for v in row) for row in affine),
        orientation_transform=tuple((float(a), float(b)) for a, b in transform),
        crop_start=tuple(int(s) for s in start),
        resampled_shape=resize,
    )
    return image_out, np.ascontiguousarray(label_out), geometry
