"""A trained model over one split: every case thresholded and put back on its source grid.

The model is loaded and the shards are read through the model's backend
(:meth:`~distmis.backends.base.Backend.predictor`,
:meth:`~distmis.backends.base.Backend.read_records`), so a ``.pt`` model is evaluated without
TensorFlow and a ``.keras`` one without PyTorch. Each case's geometry comes from ``info.json``
(the stored shards do not carry it).

Thresholded channels need not nest (an ET voxel may lie outside WT), but the label map written
for a case can hold only one value per voxel. :func:`label_map_and_regions` turns the channels
into that map (inner regions winning) and the map back into region masks; every mask scored or
drawn is one of those, so ``metrics.csv`` scores exactly what ``predictions/`` holds.

Cases are predicted one at a time, so memory is one case's, never the split's: its stored image,
its probabilities, four masks (reference and prediction, stored and source grid) and the source
label map; about 0.4 GB for a 4-channel, 3-region BraTS scan of 240×240×155 voxels, plus the
model's activations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distmis.backends.base import Predictor
from distmis.errors import ContractError
from distmis.evaluate.model import TrainedModel
from distmis.evaluate.restore import (
    geometry_from_json,
    regions_to_msd_labels,
    restore_to_source,
    write_prediction_nifti,
)
from distmis.prepare.preprocess import Geometry, map_labels
from distmis.prepare.task import LABEL_MODES
from distmis.run_folder import rule_for
from distmis.shards.info import MADE_BY as INFO_MADE_BY
from distmis.shards.info import DatasetInfo
from distmis.shards.records import Record

# map_labels takes a label mode; a prediction's channel count names it (3 regions, 1 tumour).
_MODE_BY_CHANNELS = {len(channels): mode for mode, channels in LABEL_MODES.items()}


@dataclass(frozen=True)
class CasePrediction:
    """One case, thresholded, on both grids.

    Stored grid (RAS, cropped: what the model saw): ``image (X, Y, Z, C)`` as stored,
    ``reference`` and ``predicted`` ``(X, Y, Z, K)`` bool. Source grid (the scan's own voxels,
    ``geometry.source_shape``): ``source_reference`` and ``source_predicted`` ``(X', Y', Z', K)``
    bool, where voxels the conversion cropped away are background in both, and
    ``source_label (X', Y', Z')`` uint8, the MSD label map written for the case.
    ``predicted`` and ``source_predicted`` are the regions of a label map
    (:func:`label_map_and_regions`), so they nest even where the model's channels do not.
    """

    case_id: str
    geometry: Geometry
    image: np.ndarray
    reference: np.ndarray
    predicted: np.ndarray
    source_reference: np.ndarray
    source_predicted: np.ndarray
    source_label: np.ndarray


def label_map_and_regions(channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thresholded channels ``(..., K)`` → the MSD label map ``(...)`` uint8 and its regions.

    The map is :func:`~distmis.evaluate.restore.regions_to_msd_labels` (inner regions win); the
    regions ``(..., K)`` bool are :func:`~distmis.prepare.preprocess.map_labels` of it, as BraTS
    tools derive them from a label file: WT = label > 0, TC = label in {2, 3}, ET = label 3
    (binary: tumour = label > 0, the channel itself). Nested channels come back unchanged.
    """
    label = regions_to_msd_labels(channels)
    return label, map_labels(label, _MODE_BY_CHANNELS[channels.shape[-1]]).astype(bool)


def load_predictor(model: TrainedModel) -> Predictor:
    """The model as its backend's :data:`~distmis.backends.base.Predictor`."""
    if not model.file.is_file():
        raise ContractError(f"{model.file} is missing (it is written by {rule_for(model.file)})")
    return model.backend.predictor(model.file)


def case_geometries(info: DatasetInfo) -> dict[str, Geometry]:
    """Every case's :class:`Geometry` from ``info.json``'s ``cases[]``, by case id."""
    try:
        return {case["case_id"]: geometry_from_json(case) for case in info.raw["cases"]}
    except (KeyError, TypeError, ValueError) as exc:
        path = info.root / "info.json"
        raise ContractError(
            f"{path}: cases[] lacks geometry ({exc}); rerun {INFO_MADE_BY}"
        ) from exc


def predict_case(
    predictor: Predictor, record: Record, geometry: Geometry, threshold: float
) -> CasePrediction:
    """Predict one record; a voxel is in a region when its probability is ``> threshold``.

    The reference is the stored label restored like the prediction, because info.json does not
    name the source label files; both therefore lose exactly the voxels the crop removed.
    The predicted masks on each grid are the regions of that grid's label map
    (:func:`label_map_and_regions`); the source one is the map written.
    """
    channels = predictor(record.image.astype(np.float32)) > threshold
    reference = record.label.astype(bool)
    _, predicted = label_map_and_regions(channels)
    # The map is made on the source grid from the restored channels, and the scored masks from
    # that map, so the file written and the masks scored cannot drift apart.
    source_label, source_predicted = label_map_and_regions(restore_to_source(channels, geometry))
    return CasePrediction(
        case_id=record.case_id,
        geometry=geometry,
        image=record.image,
        reference=reference,
        predicted=predicted,
        source_reference=restore_to_source(reference, geometry),
        source_predicted=source_predicted,
        source_label=source_label,
    )


def predict_split(
    model: TrainedModel, info: DatasetInfo, split: str, threshold: float
) -> Iterator[CasePrediction]:
    """Every case of ``split``, in shard order, as a :class:`CasePrediction`.

    The split, the geometries and the model file are checked, and the model loaded, before
    this returns; the cases are then predicted lazily, one per step of the iterator.
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    geometries = case_geometries(info)
    predictor = load_predictor(model)
    records = model.backend.read_records(info, split)
    return _predict_records(predictor, records, geometries, threshold, info.root / "info.json")


def _predict_records(
    predictor: Predictor,
    records: Iterable[Record],
    geometries: Mapping[str, Geometry],
    threshold: float,
    info_path: Path,
) -> Iterator[CasePrediction]:
    for record in records:
        if record.case_id not in geometries:
            raise ContractError(
                f"{info_path}: no cases[] entry for {record.case_id}; rerun {INFO_MADE_BY}"
            )
        yield predict_case(predictor, record, geometries[record.case_id], threshold)


def write_prediction(directory: str | os.PathLike[str], case: CasePrediction) -> Path:
    """Write ``<directory>/<case_id>.nii.gz``: ``case.source_label`` with the source affine."""
    path = Path(directory) / f"{case.case_id}.nii.gz"
    write_prediction_nifti(path, case.source_label, np.asarray(case.geometry.source_affine))
    return path
