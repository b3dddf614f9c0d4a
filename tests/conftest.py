"""Shared fixtures: tiny MSD-layout datasets written to tmp_path with nibabel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def random_case(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """An image (X,Y,Z,4) that is zero outside a box 'head' and a label (X,Y,Z) with 0..3."""
    image = np.zeros((*shape, 4), dtype=np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    image[inner] = rng.uniform(1.0, 5.0, size=image[inner].shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    centre = tuple(s // 2 for s in shape)
    label[
        centre[0] - 3 : centre[0] + 3, centre[1] - 3 : centre[1] + 3, centre[2] - 2 : centre[2] + 2
    ] = 1
    label[
        centre[0] - 2 : centre[0] + 2, centre[1] - 2 : centre[1] + 2, centre[2] - 1 : centre[2] + 1
    ] = 2
    label[centre[0] - 1 : centre[0] + 1, centre[1] - 1 : centre[1] + 1, centre[2]] = 3
    return image, label


def write_case(
    task: Path, case_id: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> None:
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), task / "imagesTr" / f"{case_id}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), task / "labelsTr" / f"{case_id}.nii.gz")


def write_dataset_json(task: Path, case_ids: list[str]) -> None:
    meta = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": MODALITIES,
        "labels": LABELS,
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids
        ],
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture
def make_task(tmp_path: Path):
    """Factory: ``make_task(cases=6, shape=(20, 18, 14))`` → path of a Task01_BrainTumour folder."""

    def _make(cases: int = 6, shape: tuple[int, int, int] = (20, 18, 14), seed: int = 0) -> Path:
        task = tmp_path / "msd" / "Task01_BrainTumour"
        rng = np.random.default_rng(seed)
        ids = [f"BRATS_{i:03d}" for i in range(1, cases + 1)]
        for case_id in ids:
            image, label = random_case(rng, shape)
            write_case(task, case_id, image, label, np.diag([1.0, 1.0, 1.0, 1.0]))
        write_dataset_json(task, ids)
        return task

    return _make


def synthetic_tfrecords(root: Path, cases: int, seed: int) -> Path:
    """``cases`` synthetic cases (24×24×20) converted to 16³ shards (train 2, val 1, test 1)
    under ``root``: the tiny data set the real-Ray training tests train on."""
    from distmis.prepare.convert import ConvertParams, convert_dataset
    from distmis.prepare.synthetic import synthesize_dataset

    task = synthesize_dataset(root / "raw", cases, (24, 24, 20), seed=seed, progress=False)
    out = root / "tfr"
    convert_dataset(task, out, ConvertParams(shape=(16, 16, 16), shards=(2, 1, 1)), progress=False)
    return out
