"""Evaluate a trained model on one split: metrics per case and region, predictions, overlays.

:func:`evaluate_model` is the stage's API (``distmis evaluate``, rule ``evaluate``); it only
sequences the steps of the sibling modules: resolve the model (:mod:`.model`), predict each case
on its source grid (:mod:`.predict`), score it (:mod:`.score`), draw it (:mod:`.overlay`).

The model is a ``.keras`` file (TensorFlow), a ``.pt`` file
(:mod:`distmis.backends.torch.checkpoint`), or the ``best_model.json`` card training writes
beside either, which names its backend and model file. Only that backend's framework is
imported, so each runs in an environment holding only its own framework.

Outputs under ``out_dir``:

- ``metrics.csv``: ``case_id, region, dice, hd95_mm``, one row per case and region, scoring
  the regions of the written prediction file (WT = label > 0, TC = 2 or 3, ET = 3), not the
  raw channels, which need not nest;
- ``summary.json``: per region and metric ``mean``, ``median``, ``std`` (population), ``n``,
  plus the model file, its backend, its trial (from the card, if there), threshold, split;
- ``predictions/<case_id>.nii.gz``: MSD label values (uint8) on the source voxel grid with the
  source affine;
- ``overlays/<case_id>.png``: contours on FLAIR for the first ``overlay_cases`` cases.

``predictions/`` and ``overlays/`` are built in hidden staging folders and replace the old ones
only when every case succeeded; the two files are written atomically after them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distmis.errors import ContractError
from distmis.evaluate.metrics import HD95_ONE_EMPTY_MM
from distmis.evaluate.model import TrainedModel, resolve_model
from distmis.evaluate.overlay import FLAIR_CHANNEL, draw_overlay
from distmis.evaluate.predict import CasePrediction, predict_split, write_prediction
from distmis.evaluate.restore import source_spacing, stored_spacing
from distmis.evaluate.score import case_rows, summarise, write_metrics_csv
from distmis.fileio import staged_dirs, write_json
from distmis.shards.info import DatasetInfo

log = logging.getLogger(__name__)


def evaluate_model(
    model_path: str | os.PathLike[str],
    tfrecord_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    threshold: float = 0.5,
    split: str = "test",
    overlay_cases: int = 3,
) -> dict:
    """Predict every case of ``split``, score it on the source grid, write the outputs above.

    ``model_path`` is a ``.keras`` or ``.pt`` model or a ``best_model.json`` card (see
    :func:`~distmis.evaluate.model.resolve_model`); another suffix raises ValueError. A voxel is
    predicted in a region when its sigmoid output is ``> threshold``. Returns the summary
    written to ``summary.json``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if overlay_cases < 0:
        raise ValueError(f"overlay_cases must be >= 0, got {overlay_cases}")
    model = resolve_model(Path(model_path))
    info = DatasetInfo.from_dir(Path(tfrecord_dir))
    cases = predict_split(model, info, split, threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staged_dirs(out_dir / "predictions", out_dir / "overlays") as (predictions, overlays):
        progress = tqdm(cases, total=info.count(split), unit="case", desc=split)
        caption = f"{split}, threshold {threshold:g}"
        rows = _write_cases(
            progress, info.label_channels, predictions, overlays, overlay_cases, caption
        )
        if not rows:
            raise ContractError(f"split {split!r} of {info.root} holds no records")
    write_metrics_csv(out_dir / "metrics.csv", rows)
    summary = _summary(model, info, split, threshold, rows)
    write_json(out_dir / "summary.json", summary)
    log.info(
        "evaluated %d %s cases: %s",
        summary["cases"],
        split,
        ", ".join(f"{r} Dice {s['dice']['mean']:.3f}" for r, s in summary["regions"].items()),
    )
    return summary


def _write_cases(
    cases: Iterable[CasePrediction],
    regions: Sequence[str],
    predictions_dir: Path,
    overlays_dir: Path,
    overlay_cases: int,
    caption: str,
) -> list[dict]:
    """Score and write every case, drawing the first ``overlay_cases``; all the cases' rows."""
    rows: list[dict] = []
    for number, case in enumerate(cases):
        scores = case_rows(
            case.case_id,
            case.source_predicted,
            case.source_reference,
            regions,
            source_spacing(case.geometry),
        )
        rows.extend(scores)
        write_prediction(predictions_dir, case)
        if number < overlay_cases:
            dice_by_region = {row["region"]: row["dice"] for row in scores}
            _draw_case(overlays_dir, case, regions, f"{case.case_id} ({caption})", dice_by_region)
    return rows


def _draw_case(
    directory: Path,
    case: CasePrediction,
    regions: Sequence[str],
    title: str,
    scores: Mapping[str, float],
) -> None:
    # Drawn on the stored grid, which is RAS for every case, so all overlays share one
    # orientation; its spacing is the source's permuted like the axes (and resampled, when
    # data.preprocess.resize changed the grid).
    draw_overlay(
        directory / f"{case.case_id}.png",
        case.image[..., FLAIR_CHANNEL].astype(np.float32),
        case.reference,
        case.predicted,
        regions,
        stored_spacing(case.geometry),
        title=title,
        scores=scores,
    )


def _summary(
    model: TrainedModel, info: DatasetInfo, split: str, threshold: float, rows: list[dict]
) -> dict:
    """The content of ``summary.json``."""
    regions = info.label_channels
    return {
        "model": str(model.file),
        "backend": model.backend.name,
        "trial_id": model.trial_id,
        "tfrecord_dir": str(info.root),
        "split": split,
        "threshold": threshold,
        "cases": len(rows) // len(regions),
        "regions": summarise(rows, regions),
        "hd95_one_empty_mm": f"BraTS convention: {HD95_ONE_EMPTY_MM} when exactly one mask is empty",
    }
