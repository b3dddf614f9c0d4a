"""Overlay figures: the slice through the tumour and contours really drawn into the PNG."""

from __future__ import annotations

import matplotlib.colors as mcolors
import matplotlib.image as mpimg
import numpy as np

from distmis.evaluate.overlay import REGION_COLOURS, draw_overlay, slice_centre

SHAPE = (20, 18, 16)


def test_slice_centre_is_the_reference_centre_of_mass_or_the_volume_centre():
    reference = np.zeros((*SHAPE, 2), dtype=bool)
    assert slice_centre(reference) == (10, 9, 8)
    reference[2:5, 6, 10, 0] = True  # x 2..4 → 3
    reference[3, 6, 12, 1] = True  # both channels count: z (10, 10, 10, 12) → 10.5 → 10
    assert slice_centre(reference) == (3, 6, 10)
    assert slice_centre(reference[..., 0]) == (3, 6, 10)


def _pixels_of(png, colour: str, tolerance: float = 0.08) -> int:
    rgb = np.asarray(mcolors.to_rgb(colour))
    return int(np.sum(np.all(np.abs(png[..., :3] - rgb) < tolerance, axis=-1)))


def test_draw_overlay_writes_a_png_with_the_region_contours(tmp_path):
    flair = np.random.default_rng(0).uniform(0.5, 1.0, SHAPE).astype(np.float32)
    reference = np.zeros((*SHAPE, 1), dtype=bool)
    reference[6:14, 5:13, 4:12] = True
    path = tmp_path / "overlays" / "BRATS_001.png"
    draw_overlay(
        path, flair, reference, reference, ("tumour",), (1.0, 1.0, 2.0), "BRATS_001", {"tumour": 1}
    )
    empty = tmp_path / "empty.png"
    no_tumour = np.zeros_like(reference)
    draw_overlay(empty, flair, no_tumour, no_tumour, ("tumour",), (1.0, 1.0, 1.0), "BRATS_002")
    png = mpimg.imread(path)
    assert png.shape[:2] == (460, 1200)  # 12 × 4.6 inches at 100 dpi
    # The legend's line is red in both; the contours (3 views × 2 styles) add far more.
    legend_only = _pixels_of(mpimg.imread(empty), REGION_COLOURS["tumour"])
    assert _pixels_of(png, REGION_COLOURS["tumour"]) > 10 * legend_only > 0
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == [empty, path]  # no temp file
