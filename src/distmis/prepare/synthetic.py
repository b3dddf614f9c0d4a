"""Offline stand-in for MSD Task01_BrainTumour: BraTS-like synthetic cases in the exact MSD layout.

Each case is a skull-stripped "head" ellipsoid with a per-modality brain intensity, a smooth
bias field, a cortex-like rim and Gaussian noise, plus one irregular glioma made of nested
regions: necrosis / non-enhancing core (label 2) inside an enhancing shell (label 3) inside
edema (label 1). Every region has its own contrast in each of the four channels, so a 3D U-Net
can learn all three BraTS regions (WT = label > 0, TC = label in {2, 3}, ET = label == 3).

Case ``index`` (0-based, written as ``BRATS_{index + 1:03d}``) depends only on
``(seed, index, shape)``, never on how many cases the dataset holds.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from distmis.fileio import write_json

logger = logging.getLogger(__name__)

TASK_NAME = "Task01_BrainTumour"
GENERATOR_VERSION = 1
DEFAULT_SHAPE: tuple[int, int, int] = (40, 40, 28)
# Below this the head cannot hold a tumour with all three nested regions.
MIN_AXIS = 16
MODALITIES: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w")
LABEL_NAMES: tuple[str, ...] = ("background", "edema", "non-enhancing tumor", "enhancing tumour")

# Healthy-brain intensity per channel, in raw scanner-like units (the converter z-scores).
_BRAIN_INTENSITY = np.array([400.0, 600.0, 650.0, 500.0])
# Relative change at the brain surface: grey matter is darker than white matter on T1 and
# brighter on T2/FLAIR, which gives the network some anatomy to ignore.
_CORTEX_CONTRAST = np.array([0.10, -0.15, -0.10, 0.15])
# Multiplier of healthy brain per (label 1..3, channel). Every entry is at least 0.25 away
# from 1 so each region differs from brain in every channel in a known direction.
_REGION_CONTRAST = np.array(
    [
        [1.70, 0.75, 0.75, 1.60],  # edema: FLAIR/T2 bright, T1 dark
        [1.40, 0.50, 0.55, 2.00],  # necrosis / non-enhancing: T2 very bright, T1 very dark
        [1.40, 0.70, 2.20, 1.40],  # enhancing: t1gd very bright
    ]
)
_CONTRAST_JITTER = 0.05
_INTENSITY_JITTER = 0.15
_NOISE_FRACTION = 0.03
# Noise must never drive a head voxel to zero: the converter z-scores over nonzero voxels.
_FLOOR_FRACTION = 0.05
_BIAS_AMPLITUDE = 0.04  # per axis and harmonic, in log intensity
_BIAS_HARMONICS = 2
_HEAD_RADIUS_FRACTION = (0.35, 0.45)
_HEAD_JITTER_FRACTION = 0.03
_CORTEX_START = 0.8  # normalised head radius where the cortex rim begins
_TUMOUR_RADIUS_FRACTION = (0.35, 0.6)  # whole tumour, relative to the smallest head radius
_CORE_FRACTION = (0.5, 0.75)  # tumour core radius / whole tumour radius
_NECROSIS_FRACTION = (0.5, 0.75)  # necrosis radius / tumour core radius
_MIN_NECROSIS_RADIUS = 1.5  # voxels; a sphere this size always contains a voxel centre
_MIN_SHELL = 1.0  # voxels between nested radii
_SHAPE_AMPLITUDE = 0.12  # max relative radius change from angular noise
_SHAPE_TERMS = 3
_HEAD_MARGIN = 1.5  # voxels kept between the outermost edema and the head surface


@dataclass(frozen=True)
class Lobe:
    """An irregular blob: ``radius`` modulated by low-order angular noise.

    The modulation is ``1 + sum_j w_j cos(pi f_j (u . d_j) + phi_j)`` over unit directions
    ``u``; ``sum |w_j|`` equals ``_SHAPE_AMPLITUDE`` so the radius stays within that fraction.
    """

    radius: float
    directions: np.ndarray  # (J, 3) unit vectors
    frequencies: np.ndarray  # (J,)
    phases: np.ndarray  # (J,)
    weights: np.ndarray  # (J,)


@dataclass(frozen=True)
class CaseParams:
    """Everything random about one case except the voxel noise, in voxel coordinates."""

    shape: tuple[int, int, int]
    head_centre: np.ndarray  # (3,)
    head_radii: np.ndarray  # (3,)
    tumour_centre: np.ndarray  # (3,)
    whole: Lobe
    core: Lobe
    necrosis: Lobe
    tumour_extent: float  # no tumour voxel lies further than this from tumour_centre
    intensity: np.ndarray  # (4,)
    contrast: np.ndarray  # (3, 4), rows are labels 1..3
    bias_amplitude: np.ndarray  # (4, 3, _BIAS_HARMONICS)
    bias_phase: np.ndarray  # (4, 3, _BIAS_HARMONICS)


def case_id(index: int) -> str:
    """MSD file stem for 0-based ``index``; fixed width so names never depend on the case count."""
    return f"BRATS_{index + 1:03d}"


def case_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """1 mm isotropic RAS affine with the world origin near the volume centre."""
    affine = np.eye(4)
    affine[:3, 3] = -np.floor((np.asarray(shape) - 1) / 2)
    return affine


def _validate_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(int(s) for s in shape)
    if len(values) != 3:
        raise ValueError(f"shape must have 3 axes (X, Y, Z), got {tuple(shape)!r}")
    if min(values) < MIN_AXIS:
        raise ValueError(
            f"every shape axis must be >= {MIN_AXIS} voxels to fit a tumour, got {values}"
        )
    x, y, z = values
    return x, y, z


def _validate_seed(seed: int) -> int:
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def _case_streams(index: int, seed: int) -> list[np.random.SeedSequence]:
    """Independent (parameter, noise) seeds for one case, keyed only by seed and index.

    Separate streams keep the noise unchanged if the parameter draws ever change in number.
    """
    return np.random.SeedSequence([_validate_seed(seed), int(index)]).spawn(2)


def _sample_lobe(rng: np.random.Generator, radius: float) -> Lobe:
    directions = rng.standard_normal((_SHAPE_TERMS, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = rng.uniform(1.0, 2.5, _SHAPE_TERMS)
    phases = rng.uniform(0.0, 2 * np.pi, _SHAPE_TERMS)
    weights = rng.uniform(0.5, 1.0, _SHAPE_TERMS) * rng.choice([-1.0, 1.0], _SHAPE_TERMS)
    weights *= _SHAPE_AMPLITUDE / np.abs(weights).sum()
    return Lobe(float(radius), directions, frequencies, phases, weights)


def _sample_head(rng: np.random.Generator, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    jitter = rng.uniform(-_HEAD_JITTER_FRACTION, _HEAD_JITTER_FRACTION, 3) * dims
    centre = (dims - 1) / 2 + jitter
    radii = rng.uniform(*_HEAD_RADIUS_FRACTION, 3) * dims
    # Keep a zero border of at least one voxel, which only binds on tiny volumes.
    radii = np.minimum(radii, (dims - 1) / 2 - np.abs(jitter) - 1)
    return centre, radii


def _tumour_radii(rng: np.random.Generator, head_radius: float) -> tuple[float, float, float]:
    whole = rng.uniform(*_TUMOUR_RADIUS_FRACTION) * head_radius
    core_fraction = rng.uniform(*_CORE_FRACTION)
    necrosis_fraction = rng.uniform(*_NECROSIS_FRACTION)
    # Floors keep every region present and at least a voxel thick on tiny volumes.
    necrosis = max(_MIN_NECROSIS_RADIUS, necrosis_fraction * core_fraction * whole)
    core = max(necrosis + _MIN_SHELL, core_fraction * whole)
    whole = max(core + _MIN_SHELL, whole)
    return whole, core, necrosis


def _tumour_extent(whole: float, core: float, necrosis: float) -> float:
    # Each region is also grown by one voxel around the region it must enclose (see
    # _tumour_labels), so the inner radii plus those dilations can set the reach.
    stretch = 1 + _SHAPE_AMPLITUDE
    return max(whole * stretch, core * stretch + 1, necrosis * stretch + 2)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def sample_case_params(index: int, shape: tuple[int, int, int], seed: int) -> CaseParams:
    """Draw the geometry and contrasts of case ``index``; the first draws of its generator."""
    if int(index) < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    dims_tuple = _validate_shape(shape)
    rng = np.random.default_rng(_case_streams(index, seed)[0])
    dims = np.asarray(dims_tuple, dtype=np.float64)

    head_centre, head_radii = _sample_head(rng, dims)
    head_radius = float(head_radii.min())
    whole, core, necrosis = _tumour_radii(rng, head_radius)
    extent = _tumour_extent(whole, core, necrosis)
    # A ball of the smallest head radius lies inside the ellipsoid, so keeping the tumour's
    # reach (plus margin) inside that ball keeps every tumour voxel, and its rim, in the brain.
    room = max(head_radius - extent - _HEAD_MARGIN, 0.0)
    offset = room * rng.uniform() ** (1 / 3)  # uniform over the ball of allowed centres
    tumour_centre = head_centre + offset * _random_direction(rng)

    lobes = [_sample_lobe(rng, radius) for radius in (whole, core, necrosis)]
    intensity = _BRAIN_INTENSITY * rng.uniform(1 - _INTENSITY_JITTER, 1 + _INTENSITY_JITTER, 4)
    contrast = _REGION_CONTRAST * rng.uniform(
        1 - _CONTRAST_JITTER, 1 + _CONTRAST_JITTER, _REGION_CONTRAST.shape
    )
    bias_shape = (len(MODALITIES), 3, _BIAS_HARMONICS)
    bias_amplitude = rng.uniform(-_BIAS_AMPLITUDE, _BIAS_AMPLITUDE, bias_shape)
    bias_phase = rng.uniform(0.0, 2 * np.pi, bias_shape)
    return CaseParams(
        shape=dims_tuple,
        head_centre=head_centre,
        head_radii=head_radii,
        tumour_centre=tumour_centre,
        whole=lobes[0],
        core=lobes[1],
        necrosis=lobes[2],
        tumour_extent=extent,
        intensity=intensity,
        contrast=contrast,
        bias_amplitude=bias_amplitude,
        bias_phase=bias_phase,
    )


def _separable_sum(fx: np.ndarray, fy: np.ndarray, fz: np.ndarray) -> np.ndarray:
    """``(fx[x] + fy[y]) + fz[z]`` as an (X, Y, Z) Fortran-ordered array.

    Built C-ordered as (Z, Y, X) and transposed, so its flat C order is NIfTI's voxel order.
    """
    return ((fx[None, None, :] + fy[None, :, None]) + fz[:, None, None]).T


def _head_radius_sq(params: CaseParams) -> np.ndarray:
    """Squared normalised distance from the head centre; the head is where it is <= 1."""
    axes = [
        ((np.arange(n) - c) / r) ** 2
        for n, c, r in zip(params.shape, params.head_centre, params.head_radii, strict=True)
    ]
    return _separable_sum(*axes)


def _lobe_distance(lobe: Lobe, offsets: tuple[np.ndarray, ...], dist: np.ndarray) -> np.ndarray:
    """Distance scaled by the lobe's angular modulation; the lobe is where it is < radius."""
    safe = np.where(dist > 0, dist, 1.0)
    modulation = np.ones_like(dist)
    for direction, frequency, phase, weight in zip(
        lobe.directions, lobe.frequencies, lobe.phases, lobe.weights, strict=True
    ):
        cosine = sum(o * d for o, d in zip(offsets, direction, strict=True)) / safe
        modulation += weight * np.cos(np.pi * frequency * cosine + phase)
    return dist / modulation


def _tumour_box(params: CaseParams) -> tuple[slice, slice, slice]:
    """Crop holding the whole tumour plus a voxel, for the dilations."""
    reach = params.tumour_extent + 1
    lo = np.floor(params.tumour_centre - reach).astype(int)
    hi = np.ceil(params.tumour_centre + reach).astype(int) + 1
    x, y, z = (
        slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, params.shape, strict=True)
    )
    return x, y, z


def _tumour_labels(params: CaseParams, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Label map of the tumour inside ``box`` (a crop, so big volumes stay cheap)."""
    grids = np.meshgrid(
        *(np.arange(s.start, s.stop) - c for s, c in zip(box, params.tumour_centre, strict=True)),
        indexing="ij",
    )
    offsets = tuple(grids)
    dist = np.sqrt(sum(g * g for g in offsets))
    necrosis = _lobe_distance(params.necrosis, offsets, dist) < params.necrosis.radius
    # Growing each region by one 6-connected voxel around the one it encloses guarantees the
    # BraTS nesting geometrically: necrosis never touches edema, the core never touches brain.
    face = ndimage.generate_binary_structure(3, 1)
    core = (_lobe_distance(params.core, offsets, dist) < params.core.radius) | (
        ndimage.binary_dilation(necrosis, face)
    )
    whole = (_lobe_distance(params.whole, offsets, dist) < params.whole.radius) | (
        ndimage.binary_dilation(core, face)
    )
    labels = np.zeros(dist.shape, dtype=np.uint8)
    labels[whole] = 1
    labels[core] = 3
    labels[necrosis] = 2
    return labels


def _bias_field(params: CaseParams, channel: int, voxels: tuple[np.ndarray, ...]) -> np.ndarray:
    """Smooth multiplicative field at ``voxels`` (x, y, z index arrays), times brain intensity.

    The field is separable: exp of a low-frequency cosine series along each axis.
    """
    field = np.full(voxels[0].shape, params.intensity[channel], dtype=np.float32)
    for axis, n in enumerate(params.shape):
        t = np.linspace(0.0, 1.0, n)
        log_bias = sum(
            params.bias_amplitude[channel, axis, k]
            * np.cos(np.pi * (k + 1) * t + params.bias_phase[channel, axis, k])
            for k in range(_BIAS_HARMONICS)
        )
        field *= np.exp(log_bias).astype(np.float32)[voxels[axis]]
    return field


def _cortex_weight(radius_sq: np.ndarray) -> np.ndarray:
    """0 in the deep brain rising to 1 at the head surface."""
    weight = np.sqrt(radius_sq).astype(np.float32)
    weight -= _CORTEX_START
    weight *= 1 / (1 - _CORTEX_START)
    return np.clip(weight, 0.0, 1.0, out=weight)


def _render(params: CaseParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image (X, Y, Z, 4) float32 and labels (X, Y, Z) uint8, both Fortran-ordered."""
    dims = params.shape
    # Work on the flat list of head voxels (about a quarter of the volume): everything
    # outside stays exactly zero, and noise is only drawn where it is used.
    radius_sq = _head_radius_sq(params).T.ravel()  # C order of (Z, Y, X) = NIfTI order
    head = np.flatnonzero(radius_sq <= 1.0)
    cortex = _cortex_weight(radius_sq[head])
    del radius_sq
    voxels = np.unravel_index(head, dims, order="F")

    box = _tumour_box(params)
    labels = np.zeros(dims[::-1], dtype=np.uint8).T
    labels[box] = _tumour_labels(params, box)
    head_labels = labels.T.ravel()[head]
    in_tumour = head_labels > 0

    noise = rng.standard_normal((len(MODALITIES), head.size), dtype=np.float32)
    image = np.zeros((len(MODALITIES), *dims[::-1]), dtype=np.float32)
    for channel in range(len(MODALITIES)):
        region_contrast = np.concatenate([[1.0], params.contrast[:, channel]]).astype(np.float32)
        values = cortex * np.float32(_CORTEX_CONTRAST[channel])
        values += 1
        values[in_tumour] = region_contrast[head_labels[in_tumour]]
        values *= _bias_field(params, channel, voxels)
        intensity = params.intensity[channel]
        values += noise[channel] * np.float32(_NOISE_FRACTION * intensity)
        np.maximum(values, np.float32(_FLOOR_FRACTION * intensity), out=values)
        image[channel].ravel()[head] = values
    return image.T, labels


def synthesize_case(
    index: int, shape: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesise case ``index`` (0-based): (image float32 (X,Y,Z,4), label uint8, affine).

    Pure and deterministic in ``(index, shape, seed)``. Channels follow MSD order (FLAIR, T1w,
    t1gd, T2w); labels are 0 background, 1 edema, 2 non-enhancing/necrosis, 3 enhancing.
    Arrays are Fortran-ordered, the layout NIfTI stores.
    """
    params = sample_case_params(index, shape, seed)
    rng = np.random.default_rng(_case_streams(index, seed)[1])
    image, labels = _render(params, rng)
    return image, labels, case_affine(params.shape)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)  # scanner
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm")
    return image


def _write_case(task_dir: str, index: int, shape: tuple[int, int, int], seed: int) -> str:
    """Synthesise and save one case; module-level so worker processes can pickle it."""
    image, labels, affine = synthesize_case(index, shape, seed)
    stem = case_id(index)
    root = Path(task_dir)
    nib.save(_nifti(image, affine), root / "imagesTr" / f"{stem}.nii.gz")
    nib.save(_nifti(labels, affine), root / "labelsTr" / f"{stem}.nii.gz")
    return stem


def dataset_json(cases: int) -> dict[str, object]:
    """The MSD dataset.json for ``cases`` training cases, with the real Task01 keys."""
    return {
        "name": "BRATS",
        "description": (
            "Synthetic offline stand-in for Task01_BrainTumour: gliomas segmentation of "
            "necrotic/active tumour and oedema on multimodal brain MRI"
        ),
        "reference": (
            "DistMIS synthetic generator, modelled on https://www.med.upenn.edu/sbia/brats2017.html"
        ),
        "licence": "CC0-1.0 (synthetic data, no patient information)",
        "release": f"synthetic generator v{GENERATOR_VERSION}",
        "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(MODALITIES)},
        "labels": {str(i): name for i, name in enumerate(LABEL_NAMES)},
        "numTraining": cases,
        "numTest": 0,
        "training": [
            {
                "image": f"./imagesTr/{case_id(i)}.nii.gz",
                "label": f"./labelsTr/{case_id(i)}.nii.gz",
            }
            for i in range(cases)
        ],
        "test": [],
    }


def _write_all_cases(
    task_dir: Path,
    cases: int,
    shape: tuple[int, int, int],
    seed: int,
    progress: bool,
    workers: int,
) -> None:
    with tqdm(total=cases, disable=not progress, unit="case", desc="synthesising") as bar:
        if workers == 1 or cases == 1:
            for index in range(cases):
                _write_case(str(task_dir), index, shape, seed)
                bar.update()
            return
        executor = ProcessPoolExecutor(max_workers=min(workers, cases))
        try:
            futures: list[Future[str]] = [
                executor.submit(_write_case, str(task_dir), index, shape, seed)
                for index in range(cases)
            ]
            for future in as_completed(futures):
                future.result()
                bar.update()
        finally:
            # On failure, don't let queued cases keep writing into a folder being removed.
            executor.shutdown(wait=True, cancel_futures=True)


def _publish(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder onto ``target``, replacing any earlier dataset."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    target.rename(retired)
    staging.rename(target)
    if retired.is_dir():
        shutil.rmtree(retired)
    else:
        retired.unlink()


def synthesize_dataset(
    out_dir: Path,
    cases: int,
    shape: tuple[int, int, int],
    seed: int,
    *,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write ``cases`` synthetic cases as ``out_dir/Task01_BrainTumour`` in MSD layout.

    Writes into a hidden sibling folder and renames it into place, so a failure leaves no
    partial dataset; an existing dataset there is replaced. Returns the task folder.
    """
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cases, workers = int(cases), int(workers)
    dims = _validate_shape(shape)
    seed = _validate_seed(seed)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / TASK_NAME
    staging = out_dir / f".{TASK_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (staging / sub).mkdir()
        _write_all_cases(staging, cases, dims, seed, progress, workers)
        write_json(staging / "dataset.json", dataset_json(cases))
        source = {
            "kind": "synthetic",
            "cases": cases,
            "shape": list(dims),
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
        }
        write_json(staging / "source.json", source)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d synthetic %s cases of shape %s to %s", cases, TASK_NAME, dims, target)
    return target
