"""BraTS segmentation metrics on boolean masks: Dice and the 95th-percentile Hausdorff distance.

Masks are ``(X, Y, Z)`` boolean arrays on one voxel grid; ``spacing`` is the voxel size in mm
per axis, so distances are physical even for anisotropic scans. Empty masks follow the BraTS
challenge convention (both empty: a perfect score; one empty: the worst score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# BraTS scores HD95 with one empty mask as the diagonal of its 240×240×155 mm (1 mm³) volume.
HD95_ONE_EMPTY_MM = 373.13


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap ``2|P∩R| / (|P| + |R|)``; 1.0 when both masks are empty, 0.0 when one is."""
    pred, ref = _check_pair(pred, ref)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion (6-connected; the array edge counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def directed_surface_distances(
    from_mask: np.ndarray, to_mask: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distance in mm from every surface voxel of ``from_mask`` to the nearest of ``to_mask``.

    One Euclidean distance transform of the other surface, so the cost is linear in the
    volume rather than quadratic in the surface sizes. Both masks must be non-empty.
    """
    to_surface = surface(to_mask)
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=tuple(spacing))
    return distance_to[surface(from_mask)]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the masks' surfaces.

    The larger of the two directed 95th percentiles (prediction→reference and back), as the
    BraTS evaluation reports it; percentiles interpolate linearly (numpy's default). 0.0 when
    both masks are empty, :data:`HD95_ONE_EMPTY_MM` when exactly one is.
    """
    pred, ref = _check_pair(pred, ref)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing needs one value per axis ({pred.ndim}), got {list(spacing)}")
    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not pred_any and not ref_any:
        return 0.0
    if pred_any != ref_any:
        return HD95_ONE_EMPTY_MM
    forward = directed_surface_distances(pred, ref, spacing)
    backward = directed_surface_distances(ref, pred, spacing)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))
