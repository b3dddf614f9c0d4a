"""Resampling a RAS voxel grid to another size over the same field of view (SimpleITK).

This is the original DistMIS's ``--reshape``: every case is brought to one grid size by
resampling, not only by cropping. It runs on arrays already reoriented by
:func:`distmis.prepare.preprocess.to_ras`, so axis ``i`` of the array is RAS axis ``i``.

Grid convention (the field of view is kept). A grid of ``n`` voxels of size ``s`` covers
``n * s`` mm: voxel ``i``'s centre lies at ``(i + 0.5) * s`` from the outer face of voxel 0.
Resampling to ``m`` voxels keeps both outer faces where they were, so

- new spacing ``s' = s * n / m``;
- new voxel ``i'`` has its centre at old continuous index ``(i' + 0.5) * n / m - 0.5``;
  voxel 0's centre moves by ``(s' - s) / 2`` mm along the axis.

This is ``align_corners=False`` in PyTorch's and ``grid_mode=True`` in scipy's terms. Every
new centre then lies within the old voxels' extent, so no sample falls outside the scan.

Numpy arrays here are indexed ``(X, Y, Z)``; SimpleITK's arrays are ``(z, y, x)``. The one
place that converts is :func:`_to_sitk` / :func:`_from_sitk`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

# SimpleITK (a ~53 MB wheel) is imported only when a case is resampled: converting without
# `resize` (crop/pad only) then runs on machines without it, e.g. the GPU box
# benchmarks/gpu_loop.sh carries its packages to.


def _sitk():
    import SimpleITK

    return SimpleITK


def resampled_spacing(
    spacing: Sequence[float], shape: Sequence[int], new_shape: Sequence[int]
) -> tuple[float, float, float]:
    """Voxel size in mm of ``new_shape`` covering the field of view of ``shape`` × ``spacing``."""
    _check_shapes(shape, new_shape)
    return tuple(
        float(s) * int(n) / int(m) for s, n, m in zip(spacing, shape, new_shape, strict=True)
    )


def resampled_affine(
    affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]
) -> np.ndarray:
    """The voxel-to-world affine ``(4, 4)`` of ``new_shape`` resampled from a grid of ``shape``.

    ``affine`` is the old grid's; the new one maps new index ``i'`` to the world point of old
    continuous index ``(i' + 0.5) * n / m - 0.5`` (the module's convention), so both grids'
    outer corners are the same world points.
    """
    _check_shapes(shape, new_shape)
    ratio = np.array([int(n) / int(m) for n, m in zip(shape, new_shape, strict=True)])
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(ratio)
    new_to_old[:3, 3] = (ratio - 1) / 2
    return np.asarray(affine, dtype=float) @ new_to_old


def resample_image(
    image: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int]
) -> np.ndarray:
    """Linearly resample each channel of ``image (X, Y, Z, C)`` to ``new_shape + (C,)``, float32.

    ``spacing`` is the voxel size in mm along X, Y, Z. The result is channel-major (Fortran
    order, like a loaded NIfTI), so the per-channel normalisation after it stays cheap.
    Channels go through SimpleITK one at a time: besides input and output, memory holds a
    couple of one-channel float32 copies (~36 MB each at BraTS size), not of the whole image.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an image (X, Y, Z, C), got shape {image.shape}")
    new_shape = tuple(int(m) for m in new_shape)
    out = np.empty((*new_shape, image.shape[3]), dtype=np.float32, order="F")
    for c in range(image.shape[3]):
        out[..., c] = _resample(
            image[..., c].astype(np.float32, copy=False), spacing, new_shape, _sitk().sitkLinear
        )
    return out


def resample_label(
    label: np.ndarray, spacing: Sequence[float], new_shape: Sequence[int]
) -> np.ndarray:
    """Nearest-neighbour resample of ``label (X, Y, Z)`` or ``(X, Y, Z, K)`` to ``new_shape``.

    Returns the input's dtype (bool included); each of ``K`` channels is resampled alike.

    Nearest neighbour, not linear: every output voxel takes the value of one source voxel, so
    the labels stay exactly the source's values (no 1.5 between edema and core) and nested
    MSD regions (ET ⊂ TC ⊂ WT) stay nested. Linear interpolation of each label's mask then
    argmax would give smoother boundaries, but costs one resample per label value and per
    region, and its argmax can break the nesting where regions meet.
    """
    if label.ndim not in (3, 4):
        raise ValueError(f"expected a label (X, Y, Z) or (X, Y, Z, K), got shape {label.shape}")
    # SimpleITK has no boolean pixel type; uint8 carries the same two values.
    work = label.view(np.uint8) if label.dtype == np.bool_ else label
    new_shape = tuple(int(m) for m in new_shape)
    if work.ndim == 3:
        out = _resample(work, spacing, new_shape, _sitk().sitkNearestNeighbor)
    else:
        out = np.empty((*new_shape, work.shape[3]), dtype=work.dtype, order="F")
        for k in range(work.shape[3]):
            out[..., k] = _resample(work[..., k], spacing, new_shape, _sitk().sitkNearestNeighbor)
    return out.view(np.bool_) if label.dtype == np.bool_ else out


def _check_shapes(shape: Sequence[int], new_shape: Sequence[int]) -> None:
    if len(shape) != 3 or len(new_shape) != 3 or any(int(v) < 1 for v in (*shape, *new_shape)):
        raise ValueError(
            f"expected two spatial shapes of three positive sizes, got {tuple(shape)} "
            f"and {tuple(new_shape)}"
        )


def _to_sitk(volume: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """A SimpleITK image of ``volume (X, Y, Z)``: origin 0 at voxel 0's centre, identity axes."""
    # SimpleITK reads a numpy array as (z, y, x); transposing makes its x our X. For a
    # Fortran-ordered volume (as NIfTI loads) the transpose is already C-contiguous: no copy.
    image = _sitk().GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def _from_sitk(image: sitk.Image) -> np.ndarray:
    """``(X, Y, Z)`` array of a SimpleITK image (a Fortran-ordered view of its copy)."""
    return _sitk().GetArrayFromImage(image).transpose(2, 1, 0)


def _resample(
    volume: np.ndarray, spacing: Sequence[float], new_shape: tuple[int, int, int], interpolator
) -> np.ndarray:
    """One ``(X, Y, Z)`` volume onto ``new_shape`` over the same field of view."""
    _check_shapes(volume.shape, new_shape)
    source = _to_sitk(volume, spacing)
    new_spacing = resampled_spacing(spacing, volume.shape, new_shape)
    # The array is RAS already, so the world frame can be the voxel frame itself (identity
    # direction, origin at voxel 0's centre); only the two grids' relation matters.
    origin = tuple((new - old) / 2 for new, old in zip(new_spacing, spacing, strict=True))
    sitk = _sitk()
    resampled = sitk.Resample(
        source,
        list(new_shape),
        sitk.Transform(),
        interpolator,
        origin,
        new_spacing,
        source.GetDirection(),
        0,
        source.GetPixelID(),
    )
    return _from_sitk(resampled)
