"""Evaluate a trained model on one split: metrics per case and region, predictions, overlays.

The model is a ``.keras`` file (TensorFlow), a ``.pt`` file
(:mod:`distmis.torch_backend.checkpoint`), or the ``best_model.json`` card training writes
beside either, which names its backend and model file. The PyTorch path imports no
TensorFlow (it reads the shards with :mod:`distmis.torch_backend.tfrecord`), and the Keras
path no PyTorch, so each runs in an environment holding only its own framework.

Outputs under ``out_dir``:

- ``metrics.csv``: ``case_id, region, dice, hd95_mm``, one row per case and region;
- ``summary.json``: per region and metric ``mean``, ``median``, ``std`` (population), ``n``,
  plus the model file, its backend, its trial (from the card, if there), threshold, split;
- ``predictions/<case_id>.nii.gz``: MSD label values (uint8) on the source voxel grid with the
  source affine;
- ``overlays/<case_id>.png``: contours on FLAIR for the first ``overlay_cases`` cases.

Metrics are computed on the source voxel grid with its voxel spacing, so HD95 is in mm of
the original scan. The reference is the stored label restored the same way as the prediction
(info.json does not name the source files): voxels the conversion cropped away count as
background in both, which is exact whenever the crop kept the whole tumour.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

# Sets TF_USE_LEGACY_KERAS for the Keras path; imports neither TensorFlow nor Keras itself.
import distmis.model  # noqa: F401
from distmis.data import records
from distmis.data.info import MADE_BY as INFO_MADE_BY
from distmis.data.info import DatasetInfo
from distmis.errors import ContractError
from distmis.evaluate.metrics import dice, hd95
from distmis.evaluate.overlay import draw_overlay
from distmis.evaluate.restore import (
    geometry_from_json,
    regions_to_msd_labels,
    restore_to_source,
    write_prediction_nifti,
)
from distmis.fileio import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

MODEL_MADE_BY = "rule train_data_parallel / train_experiment_parallel (`distmis train`)"
METRIC_COLUMNS = ("case_id", "region", "dice", "hd95_mm")
METRICS = ("dice", "hd95_mm")
FLAIR_CHANNEL = 0
BACKENDS = {".keras": "tensorflow", ".pt": "torch"}
CARD_SUFFIX = ".json"

# One case's image (X, Y, Z, C) float32 → sigmoid probabilities (X, Y, Z, K).
Predictor = Callable[[np.ndarray], np.ndarray]


def resolve_model(model_path: Path) -> tuple[Path, str, Path | None]:
    """``(model file, backend, card or None)`` for a ``.keras``, ``.pt`` or card path.

    The card is ``best_model.json``: ``{"backend", "model_file" (relative to the card's
    folder), "trial", "model", "tfrecord_dir"}``; beside a model file it has the same stem.
    """
    suffix = model_path.suffix
    if suffix not in (*BACKENDS, CARD_SUFFIX):
        raise ValueError(
            f"model must be a .keras or .pt file or a {CARD_SUFFIX} model card, got {model_path}"
        )
    if suffix != CARD_SUFFIX:
        card = model_path.with_suffix(CARD_SUFFIX)
        return model_path, BACKENDS[suffix], card if card.is_file() else None
    content = read_json(model_path, MODEL_MADE_BY)
    try:
        backend, model_file = content["backend"], model_path.parent / content["model_file"]
    except (KeyError, TypeError) as exc:
        raise ContractError(f"{model_path} lacks {exc}; rerun {MODEL_MADE_BY}") from exc
    if BACKENDS.get(model_file.suffix) != backend:
        raise ContractError(
            f"{model_path}: backend {backend!r} does not fit model_file {model_file.name!r} "
            f"(.keras is tensorflow, .pt is torch); rerun {MODEL_MADE_BY}"
        )
    return model_file, backend, model_path


def _keras_predictor(model_file: Path) -> Predictor:
    import tf_keras as keras

    model = keras.models.load_model(model_file, compile=False)

    def predict(image: np.ndarray) -> np.ndarray:
        return np.asarray(model(image[None], training=False))[0]

    return predict


def _torch_predictor(model_file: Path) -> Predictor:
    import torch

    from distmis.torch_backend.checkpoint import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_file, MODEL_MADE_BY).to(device)

    def predict(image: np.ndarray) -> np.ndarray:
        # The torch U-Net is channels-first: (X, Y, Z, C) → (1, C, X, Y, Z) and back.
        batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))[None]
        with torch.inference_mode():
            probabilities = model(batch.to(device))[0].float().cpu().numpy()
        return np.moveaxis(probabilities, 0, -1)

    return predict


def _load_model(model_file: Path, backend: str) -> Predictor:
    """The model in ``model_file`` as a :data:`Predictor`."""
    if not model_file.is_file():
        raise ContractError(f"{model_file} is missing (it is written by {MODEL_MADE_BY})")
    return _torch_predictor(model_file) if backend == "torch" else _keras_predictor(model_file)


def _trial_of(card: Path | None) -> dict | None:
    """The best trial's row from the model card, if there is one."""
    return None if card is None else read_json(card, MODEL_MADE_BY).get("trial")


def _geometries(info: DatasetInfo) -> dict:
    try:
        return {case["case_id"]: geometry_from_json(case) for case in info.raw["cases"]}
    except (KeyError, TypeError, ValueError) as exc:
        path = info.root / "info.json"
        raise ContractError(
            f"{path}: cases[] lacks geometry ({exc}); rerun {INFO_MADE_BY}"
        ) from exc


def iter_records(
    info: DatasetInfo, split: str, backend: str = "tensorflow"
) -> Iterator[records.Record]:
    """Decoded :class:`~distmis.data.records.Record` of ``split`` in shard order.

    Read with the backend's own reader (tf.data, or the TensorFlow-free one for torch, which
    the tests check byte for byte against tf.data), so neither path needs the other framework.
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    if backend == "torch":
        from distmis.torch_backend.tfrecord import rank_part, read_part

        part = rank_part(info.splits[split], 0, 1)
        yield from read_part(part, info.image_dtype, len(info.label_channels), info.compression)
        return
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(info.shard_files(split), compression_type=info.tf_compression)
    for serialized in dataset:
        yield records.decode_example(serialized, info.image_dtype, len(info.label_channels))


def summarise(rows: list[dict], regions: tuple[str, ...]) -> dict:
    """Per region and metric: mean, median, population std and the number of cases."""
    summary = {}
    for region in regions:
        summary[region] = {}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows if r["region"] == region], dtype=float)
            summary[region][metric] = (
                {
                    "mean": float(values.mean()),
                    "median": float(np.median(values)),
                    "std": float(values.std()),
                    "n": int(values.size),
                }
                if values.size
                else {"mean": None, "median": None, "std": None, "n": 0}
            )
    return summary


def _write_metrics_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def _staging_dir(target: Path) -> Path:
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    return staging


def _publish_dir(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging``: a rerun never leaves an old case's files behind."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


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
    :func:`resolve_model`); another suffix raises ValueError. A voxel is predicted in a region
    when its sigmoid output is ``> threshold``. Returns the summary written to ``summary.json``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if overlay_cases < 0:
        raise ValueError(f"overlay_cases must be >= 0, got {overlay_cases}")
    model_file, backend, card = resolve_model(Path(model_path))
    out_dir = Path(out_dir)
    info = DatasetInfo.from_dir(Path(tfrecord_dir))
    geometries = _geometries(info)
    predict = _load_model(model_file, backend)
    regions = info.label_channels
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_dir, overlays_dir = out_dir / "predictions", out_dir / "overlays"
    predictions_tmp, overlays_tmp = _staging_dir(predictions_dir), _staging_dir(overlays_dir)

    rows: list[dict] = []
    try:
        cases = iter_records(info, split, backend)
        bar = tqdm(cases, total=info.count(split), unit="case", desc=split)
        for number, record in enumerate(bar):
            if record.case_id not in geometries:
                raise ContractError(
                    f"{info.root / 'info.json'}: no cases[] entry for {record.case_id}; "
                    f"rerun {INFO_MADE_BY}"
                )
            geometry = geometries[record.case_id]
            probabilities = predict(record.image.astype(np.float32))
            predicted = probabilities > threshold  # (X, Y, Z, K) in stored space
            reference = record.label.astype(bool)
            source_pred = restore_to_source(predicted, geometry)
            source_ref = restore_to_source(reference, geometry)
            spacing = nib.affines.voxel_sizes(np.asarray(geometry.source_affine))
            case_scores = {}
            for channel, region in enumerate(regions):
                pred_mask, ref_mask = source_pred[..., channel], source_ref[..., channel]
                row = {
                    "case_id": record.case_id,
                    "region": region,
                    "dice": dice(pred_mask, ref_mask),
                    "hd95_mm": hd95(pred_mask, ref_mask, spacing),
                }
                rows.append(row)
                case_scores[region] = row["dice"]
            write_prediction_nifti(
                predictions_tmp / f"{record.case_id}.nii.gz",
                regions_to_msd_labels(source_pred),
                np.asarray(geometry.source_affine),
            )
            if number < overlay_cases:
                # Stored space is RAS, so its spacing is the source's, permuted like the axes.
                ras_spacing = [0.0, 0.0, 0.0]
                for axis, (ras_axis, _) in enumerate(geometry.orientation_transform):
                    ras_spacing[int(ras_axis)] = float(spacing[axis])
                draw_overlay(
                    overlays_tmp / f"{record.case_id}.png",
                    record.image[..., FLAIR_CHANNEL].astype(np.float32),
                    reference,
                    predicted,
                    regions,
                    ras_spacing,
                    title=f"{record.case_id} ({split}, threshold {threshold:g})",
                    scores=case_scores,
                )
        if not rows:
            raise ContractError(f"split {split!r} of {info.root} holds no records")
        _publish_dir(predictions_tmp, predictions_dir)
        _publish_dir(overlays_tmp, overlays_dir)
    except BaseException:
        shutil.rmtree(predictions_tmp, ignore_errors=True)
        shutil.rmtree(overlays_tmp, ignore_errors=True)
        raise

    _write_metrics_csv(out_dir / "metrics.csv", rows)
    trial = _trial_of(card)
    summary = {
        "model": str(model_file),
        "backend": backend,
        "trial_id": trial.get("trial_id") if trial else None,
        "tfrecord_dir": str(info.root),
        "split": split,
        "threshold": threshold,
        "cases": len(rows) // len(regions),
        "regions": summarise(rows, regions),
        "hd95_one_empty_mm": "BraTS convention: 373.13 when exactly one mask is empty",
    }
    write_json(out_dir / "summary.json", summary)
    log.info(
        "evaluated %d %s cases: %s",
        summary["cases"],
        split,
        ", ".join(f"{r} Dice {summary['regions'][r]['dice']['mean']:.3f}" for r in regions),
    )
    return summary
