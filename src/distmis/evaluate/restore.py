"""Stored arrays back to the source scan: undo the crop/pad, the resize and the reorientation.

Conversion (:func:`distmis.prepare.preprocess.preprocess_case`) reorients each case to RAS by
permuting and flipping axes, optionally resamples it to ``data.preprocess.resize`` over the
same field of view, then centre crops/pads it; its :class:`Geometry` records all three.
Undoing them in reverse order puts a prediction on the source voxel grid, so it lines up with
the source affine. Voxels that the crop removed are unknown to the model and come back as 0.
The resize is undone by nearest neighbour (:func:`distmis.prepare.resample.resample_label`):
what comes back is masks and label maps, whose values must stay exact.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

from distmis.fileio import atomic_path
from distmis.prepare import resample
from distmis.prepare.preprocess import Geometry, crop_or_pad

# MSD label value of each region, written in this order so inner regions win:
# WT∖TC → 1 (edema), TC∖ET → 2 (non-enhancing core), ET → 3 (enhancing).
_MSD_VALUES_BY_CHANNELS = {3: (1, 2, 3), 1: (1,)}


def geometry_from_json(case: Mapping) -> Geometry:
    """The :class:`Geometry` of one ``info.json`` ``cases[]`` entry (lists back to tuples)."""
    return Geometry(
        source_shape=tuple(int(s) for s in case["source_shape"]),
        source_affine=tuple(tuple(float(v) for v in row) for row in case["source_affine"]),
        orientation_transform=tuple((float(a), float(b)) for a, b in case["orientation_transform"]),
        crop_start=tuple(int(s) for s in case["crop_start"]),
        # info.json files written before resizing existed have no key: nothing was resampled.
        resampled_shape=(
            None
            if case.get("resampled_shape") is None
            else tuple(int(s) for s in case["resampled_shape"])
        ),
    )


def _in_ras_order(per_source_axis: Sequence, geometry: Geometry) -> list:
    """Values given per source axis, reordered per RAS axis (reorientation only permutes)."""
    per_ras_axis = [None, None, None]
    for source_axis, (ras_axis, _flip) in enumerate(geometry.orientation_transform):
        per_ras_axis[int(ras_axis)] = per_source_axis[source_axis]
    return per_ras_axis


def ras_shape(geometry: Geometry) -> tuple[int, int, int]:
    """Spatial shape of the source scan after reorientation to RAS (before the crop)."""
    return tuple(int(n) for n in _in_ras_order(geometry.source_shape, geometry))


def source_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """Voxel size in mm along each source axis, from the source affine."""
    sizes = nib.affines.voxel_sizes(np.asarray(geometry.source_affine))
    return tuple(float(size) for size in sizes)


def ras_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """Voxel size in mm along each RAS axis of the scan: the source's, permuted like the axes.

    Also the stored arrays' spacing unless the case was resampled; see :func:`stored_spacing`.
    """
    return tuple(_in_ras_order(source_spacing(geometry), geometry))


def stored_grid_shape(geometry: Geometry) -> tuple[int, int, int]:
    """Shape of the RAS grid the crop/pad window was taken from: resampled, or the scan's."""
    if geometry.resampled_shape is None:
        return ras_shape(geometry)
    return tuple(int(n) for n in geometry.resampled_shape)


def stored_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """Voxel size in mm along each axis of the stored arrays (RAS, resampled if it was)."""
    return resample.resampled_spacing(
        ras_spacing(geometry), ras_shape(geometry), stored_grid_shape(geometry)
    )


def inverse_transform(transform: np.ndarray) -> np.ndarray:
    """The nibabel ornt transform undoing ``transform`` (RAS axes back to source axes)."""
    transform = np.asarray(transform, dtype=float)
    inverse = np.empty_like(transform)
    for source_axis, (ras_axis, flip) in enumerate(transform):
        # Source axis i went to RAS axis j with flip f; so RAS axis j returns to i, same flip.
        inverse[int(ras_axis)] = (source_axis, flip)
    return inverse


def restore_to_source(stored: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Put a stored-space array ``(X, Y, Z)`` or ``(X, Y, Z, K)`` on the source voxel grid.

    Returns an array of shape ``source_shape`` (plus the trailing axis, if any) and the input's
    dtype: zeros where the conversion cropped the scan, the stored values elsewhere (each
    source voxel taking its nearest stored voxel's value if the case was resampled), with the
    axes permuted and flipped back so that ``geometry.source_affine`` maps it to the world.
    """
    if stored.ndim not in (3, 4):
        raise ValueError(f"expected (X, Y, Z) or (X, Y, Z, K), got shape {stored.shape}")
    # crop_or_pad computes out[i] = array[i + start]; the conversion stored
    # stored[j] = grid[j + crop_start], so start = -crop_start inverts it.
    start = tuple(-s for s in geometry.crop_start)
    ras = crop_or_pad(stored, stored_grid_shape(geometry), start)
    if geometry.resampled_shape is not None:
        # Back over the same field of view, from the resampled grid to the scan's RAS grid.
        ras = resample.resample_label(ras, stored_spacing(geometry), ras_shape(geometry))
    inverse = inverse_transform(np.asarray(geometry.orientation_transform))
    source = nib.orientations.apply_orientation(ras, inverse)
    if source.shape[:3] != tuple(geometry.source_shape):
        raise AssertionError(f"restored shape {source.shape} != source {geometry.source_shape}")
    return np.ascontiguousarray(source)


def regions_to_msd_labels(regions: np.ndarray) -> np.ndarray:
    """Region masks ``(..., K)`` → MSD label values ``(...)`` uint8.

    ``K = 3`` (WT, TC, ET): ET → 3, TC∖ET → 2, WT∖TC → 1, background 0; a voxel of an inner
    region outside the outer one (possible in a prediction) still takes the inner label.
    ``K = 1`` (binary tumour): tumour → 1.
    """
    regions = np.asarray(regions, dtype=bool)
    channels = regions.shape[-1]
    if channels not in _MSD_VALUES_BY_CHANNELS:
        raise ValueError(f"expected 3 (WT, TC, ET) or 1 (tumour) channels, got {channels}")
    label = np.zeros(regions.shape[:-1], dtype=np.uint8)
    for channel, value in enumerate(_MSD_VALUES_BY_CHANNELS[channels]):
        label[regions[..., channel]] = value
    return label


def write_prediction_nifti(
    path: str | os.PathLike[str], label: np.ndarray, source_affine: np.ndarray
) -> None:
    """Write an MSD label volume ``(X, Y, Z)`` as uint8 NIfTI with the source affine, atomically.

    The header's sform and qform both carry the affine (code 1, scanner), as in MSD files.
    """
    affine = np.asarray(source_affine, dtype=float)
    image = nib.Nifti1Image(np.asarray(label, dtype=np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    # atomic_path's temp name hides the .nii.gz suffix nibabel infers the format from, so
    # serialise to single-file NIfTI bytes and gzip them ourselves.
    payload = gzip.compress(image.to_bytes(), compresslevel=6)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
