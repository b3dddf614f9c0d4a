"""Scores of an evaluation: one row per case and region, their summary, ``metrics.csv``.

A row is ``{"case_id", "region", "dice", "hd95_mm"}`` (:data:`METRIC_COLUMNS`), computed on the
source voxel grid with its voxel spacing, so HD95 is in mm of the original scan.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from distmis.evaluate.metrics import dice, hd95
from distmis.fileio import atomic_path

METRIC_COLUMNS = ("case_id", "region", "dice", "hd95_mm")
METRICS = ("dice", "hd95_mm")


def case_rows(
    case_id: str,
    predicted: np.ndarray,
    reference: np.ndarray,
    regions: Sequence[str],
    spacing: Sequence[float],
) -> list[dict]:
    """One row per region of boolean masks ``(X, Y, Z, K)``; channel ``k`` is ``regions[k]``.

    ``spacing`` is the voxel size in mm per axis, for HD95.
    """
    if predicted.shape[-1] != len(regions):
        raise ValueError(
            f"masks have {predicted.shape[-1]} channels, but regions are {list(regions)}"
        )
    rows = []
    for channel, region in enumerate(regions):
        pred_mask, ref_mask = predicted[..., channel], reference[..., channel]
        rows.append(
            {
                "case_id": case_id,
                "region": region,
                "dice": dice(pred_mask, ref_mask),
                "hd95_mm": hd95(pred_mask, ref_mask, spacing),
            }
        )
    return rows


def summarise(rows: Sequence[dict], regions: Sequence[str]) -> dict:
    """Per region and metric: mean, median, population std and the number of cases.

    A region without rows gets ``None`` statistics and ``n`` 0.
    """
    summary = {}
    for region in regions:
        summary[region] = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows if r["region"] == region], dtype=float)
            summary[region][metric] = _statistics(values)
    return summary


def _statistics(values: np.ndarray) -> dict:
    if not values.size:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "n": int(values.size),
    }


def write_metrics_csv(path: str | os.PathLike[str], rows: Sequence[dict]) -> None:
    """Write ``metrics.csv`` atomically: :data:`METRIC_COLUMNS`, floats to 6 significant digits."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
