"""Reading a Medical Segmentation Decathlon task folder (Task01_BrainTumour layout).

Layout: ``<task>/dataset.json``, ``<task>/imagesTr/<case>.nii.gz`` (4D, ``(X, Y, Z, C)``),
``<task>/labelsTr/<case>.nii.gz`` (3D). The official archive carries macOS ``._*``
resource-fork files beside the real ones; names starting with ``.`` or ``_`` are ignored.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from distmis.errors import CaseError, DatasetError
from distmis.prepare.task import EXPECTED_CHANNELS

NIFTI_SUFFIX = ".nii.gz"

# Affines of image and label are written by the same tool; anything beyond float
# round-off means the label was resampled or belongs to another scan.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class CaseFiles:
    """Where one labelled case lives."""

    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class MsdTask:
    """A validated MSD task folder: its dataset.json facts and its labelled cases."""

    root: Path
    name: str
    modalities: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[CaseFiles, ...]


@dataclass(frozen=True)
class LoadedCase:
    """A case as stored: image ``(X, Y, Z, C)`` float32, label ``(X, Y, Z)`` uint8, affine 4×4."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _is_junk(name: str) -> bool:
    return name.startswith((".", "_"))


def _case_id(path: Path) -> str:
    return path.name.removesuffix(NIFTI_SUFFIX)


def resolve_task_dir(path: Path) -> Path:
    """Accept the task folder itself or a folder holding exactly one ``Task*`` folder."""
    path = Path(path)
    if (path / "dataset.json").is_file():
        return path
    candidates = sorted(p for p in path.glob("Task*") if (p / "dataset.json").is_file())
    if len(candidates) == 1:
        return candidates[0]
    if not path.exists():
        raise DatasetError(
            f"{path} does not exist (run `distmis synthesize` or `distmis download`)"
        )
    raise DatasetError(f"{path} has no dataset.json (expected an MSD task folder)")


def open_task(path: Path) -> MsdTask:
    """Read dataset.json and pair every listed training image with its label.

    Raises DatasetError when dataset.json and the files disagree (a listed file is
    missing, a file on disk is not listed, ``numTraining`` is wrong) or imagesTr is empty.
    """
    root = resolve_task_dir(path)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from exc
    for key in ("modality", "labels", "training"):
        if key not in meta:
            raise DatasetError(f"{meta_path} lacks the key '{key}'")

    images_dir = root / "imagesTr"
    on_disk = (
        sorted(p.name for p in images_dir.glob(f"*{NIFTI_SUFFIX}") if not _is_junk(p.name))
        if images_dir.is_dir()
        else []
    )
    if not on_disk:
        raise DatasetError(f"{images_dir} holds no {NIFTI_SUFFIX} images")

    cases = []
    listed_names = set()
    for entry in meta["training"]:
        image = root / entry["image"]
        label = root / entry["label"]
        case_id = _case_id(image)
        listed_names.add(image.name)
        if not image.is_file():
            raise DatasetError(f"case {case_id}: dataset.json lists {entry['image']}, not on disk")
        # A missing label is a per-case problem (skippable), checked when the case loads.
        cases.append(CaseFiles(case_id, image, label))

    unlisted = sorted(set(on_disk) - listed_names)
    if unlisted:
        raise DatasetError(
            f"{meta_path} does not list {len(unlisted)} image(s) in imagesTr, e.g. {unlisted[0]}"
        )
    declared = meta.get("numTraining")
    if declared is not None and declared != len(cases):
        raise DatasetError(
            f"{meta_path} says numTraining={declared} but lists {len(cases)} training cases"
        )
    modalities = tuple(meta["modality"][k] for k in sorted(meta["modality"], key=int))
    if len(modalities) != EXPECTED_CHANNELS:
        raise DatasetError(
            f"{meta_path} declares {len(modalities)} modalities, expected {EXPECTED_CHANNELS}"
        )
    labels = {int(k): v for k, v in meta["labels"].items()}
    return MsdTask(root, meta.get("name", root.name), modalities, labels, tuple(cases))


def _read_array(path: Path, case_id: str, dtype: type | None) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI's voxels and affine, turning decoder failures into CaseError."""
    try:
        img = nib.load(path)
        # dataobj applies scl_slope/inter; asarray keeps the on-disk (Fortran) layout,
        # which makes per-channel slices contiguous for the normalisation that follows.
        data = np.asarray(img.dataobj, dtype=dtype)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise CaseError(case_id, f"cannot read {path.name}: {exc}") from exc
    except nib.filebasedimages.ImageFileError as exc:
        raise CaseError(case_id, f"{path.name} is not a NIfTI file: {exc}") from exc
    return data, img.affine


def load_case(case: CaseFiles) -> LoadedCase:
    """Load and validate one case: 4 channels, same grid, finite values, matching affines."""
    if not case.label.is_file():
        raise CaseError(case.case_id, f"label file {case.label} is missing")
    image, image_affine = _read_array(case.image, case.case_id, np.float32)
    label, label_affine = _read_array(case.label, case.case_id, None)
    if image.ndim != 4 or image.shape[3] != EXPECTED_CHANNELS:
        raise CaseError(
            case.case_id,
            f"expected {EXPECTED_CHANNELS} channels (X,Y,Z,4), got shape {image.shape}",
        )
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.shape != image.shape[:3]:
        raise CaseError(
            case.case_id, f"label grid {label.shape} differs from image grid {image.shape[:3]}"
        )
    if not np.allclose(image_affine, label_affine, atol=AFFINE_TOLERANCE_MM):
        raise CaseError(case.case_id, "image and label affines disagree")
    if not np.isfinite(image).all():
        raise CaseError(
            case.case_id, f"image has {int((~np.isfinite(image)).sum())} NaN/inf voxels"
        )
    if label.dtype.kind == "f" and (
        not np.isfinite(label).all() or (label != np.round(label)).any()
    ):
        raise CaseError(case.case_id, "label has non-integer or NaN values")
    if label.min() < 0 or label.max() > 255:
        raise CaseError(case.case_id, f"label values outside 0..255 ({label.min()}..{label.max()})")
    return LoadedCase(case.case_id, image, label.astype(np.uint8), image_affine)
