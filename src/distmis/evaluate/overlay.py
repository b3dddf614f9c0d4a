"""Contour overlays: reference and predicted regions on FLAIR, one axial/coronal/sagittal row.

Drawn in the stored (RAS, cropped) space, so every case shows the same orientation whatever
its source orientation: x (patient right) to the right, anterior or superior up, i.e. the
neurological convention. Built on :class:`matplotlib.figure.Figure`
with an Agg canvas, never pyplot, so no global figure state or display is involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distmis.fileio import atomic_path

# One colour per region, kept for reference (solid) and prediction (dashed).
REGION_COLOURS = {"WT": "#1f77b4", "TC": "#ffbf00", "ET": "#d62728", "tumour": "#d62728"}
# (view name, axis held fixed, the two RAS axes shown as (horizontal, vertical)).
VIEWS = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
AXIS_NAMES = ("x (R)", "y (A)", "z (S)")
# The image channel drawn under the contours: MSD Task01 stores FLAIR, T1w, T1gd, T2w.
FLAIR_CHANNEL = 0


def slice_centre(reference: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the reference's centre of mass (all channels), or the volume centre if empty.

    ``reference`` is ``(X, Y, Z)`` or ``(X, Y, Z, K)``.
    """
    mask = reference.any(axis=-1) if reference.ndim == 4 else reference.astype(bool)
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    coords = np.argwhere(mask).mean(axis=0)
    return tuple(int(round(c)) for c in coords)


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D plane at ``index`` along ``axis``, as (rows = vertical axis, cols = horizontal)."""
    return np.take(volume, index, axis=axis).T


def draw_overlay(
    path: str | os.PathLike[str],
    flair: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    region_names: Sequence[str],
    spacing: Sequence[float],
    title: str,
    scores: Mapping[str, float] | None = None,
) -> None:
    """Write a PNG: FLAIR ``(X, Y, Z)`` with reference/prediction ``(X, Y, Z, K)`` contours.

    ``spacing`` (mm, per shown axis) sets the pixel aspect so anisotropic scans look right;
    ``scores`` (region → Dice), when given, go into the panel titles' caption line.
    """
    centre = slice_centre(reference)
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    low, high = np.percentile(flair[flair != 0], (1, 99)) if np.any(flair) else (0.0, 1.0)
    for ax, (view, axis, (horizontal, vertical)) in zip(axes, VIEWS, strict=True):
        index = centre[axis]
        ax.imshow(
            _plane(flair, axis, index),
            cmap="gray",
            vmin=low,
            vmax=high,
            origin="lower",
            aspect=spacing[vertical] / spacing[horizontal],
            interpolation="nearest",
        )
        for channel, name in enumerate(region_names):
            colour = REGION_COLOURS.get(name, "#2ca02c")
            # Nested regions share boundaries (TC's outer edge is ET's in BraTS): outer regions
            # are drawn first and wider, so a shared edge shows both colours side by side.
            width = 1.0 + 0.7 * (len(region_names) - 1 - channel)
            for masks, style in ((reference, "solid"), (prediction, "dashed")):
                plane = _plane(masks[..., channel], axis, index).astype(float)
                # contour() warns and draws nothing on a constant plane.
                if plane.min() != plane.max():
                    ax.contour(
                        plane, levels=[0.5], colors=[colour], linestyles=style, linewidths=width
                    )
        ax.set_title(f"{view} ({AXIS_NAMES[axis][0]} = {index})")
        ax.set_xlabel(AXIS_NAMES[horizontal])
        ax.set_ylabel(AXIS_NAMES[vertical])
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], color=REGION_COLOURS.get(name, "#2ca02c"), label=name)
        for name in region_names
    ] + [
        Line2D([], [], color="black", linestyle="solid", label="reference"),
        Line2D([], [], color="black", linestyle="dashed", label="prediction"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    if scores:
        title += "   Dice " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
