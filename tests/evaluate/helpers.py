"""Hand-made cases and a stand-in model shared by the evaluation tests."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from distmis import backends
from distmis.backends.torch import TorchBackend
from distmis.shards.info import DatasetInfo

# The hand-made LPS case: odd, unequal axes so any swapped axis or off-by-one in the crop shows.
SOURCE_SHAPE = (13, 11, 9)
STORED_SHAPE = (8, 16, 6)  # in RAS (11, 13, 9): crops x and z, pads y
# The synthetic dataset of conftest.py: 8 cases, 2 of them in test.
SYNTHETIC_SOURCE_SHAPE = (24, 24, 20)
SYNTHETIC_STORED_SHAPE = (16, 16, 16)


def lps_affine() -> np.ndarray:
    """An LPS scan (x → left, y → posterior) with anisotropic voxels and an axis permutation.

    Values exact in float32, as any affine read from a NIfTI header is (the header stores
    float32), so the written file can be compared exactly.
    """
    # Voxel axes: i → world -y (P), j → world -x (L), k → world z (S): io_orientation is P, L, S.
    affine = np.array(
        [
            [0.0, -0.875, 0.0, 40.5],
            [-1.25, 0.0, 0.0, 55.0],
            [0.0, 0.0, 2.5, -30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert nib.aff2axcodes(affine) == ("P", "L", "S")
    return affine


def source_case() -> tuple[np.ndarray, np.ndarray]:
    """A source image ``SOURCE_SHAPE + (4,)`` and MSD label with all of 1, 2, 3."""
    rng = np.random.default_rng(7)
    image = rng.uniform(1.0, 2.0, size=(*SOURCE_SHAPE, 4)).astype(np.float32)
    label = np.zeros(SOURCE_SHAPE, dtype=np.uint8)
    # An asymmetric tumour near the centre, inside the kept window of every axis.
    label[5:9, 4:7, 3:6] = 1
    label[6:8, 4:6, 4:6] = 2
    label[6, 5, 4] = 3
    label[7, 4, 5] = 3
    return image, label


def split_cases(tfrecord_dir, split: str = "test") -> list[dict]:
    """The ``info.json`` ``cases[]`` entries of ``split``."""
    info = DatasetInfo.from_dir(tfrecord_dir)
    return [c for c in info.raw["cases"] if c["split"] == split]


class Oracle:
    """Stands in for a model: returns each image of ``split`` its own stored label."""

    def __init__(self, info: DatasetInfo, split: str = "test") -> None:
        self.labels = {
            r.image.astype(np.float32).tobytes(): r.label.astype(np.float32)
            for r in backends.get("torch").read_records(info, split)
        }

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.labels[np.asarray(image, dtype=np.float32).tobytes()]


class NotNested:
    """Stands in for a model whose channels are not nested, as an untrained one's may be.

    Each image of ``split`` gets its stored label's regions moved one channel outwards and
    edema in the innermost: WT ← reference TC, TC ← reference ET, ET ← reference edema
    (WT∖TC). Predicted ET then lies wholly outside predicted WT, so the written label map
    (inner regions winning) nests differently from the raw channels: it is 3 on the edema,
    2 on reference ET, 1 on the rest of the core, so its WT is the whole reference tumour.
    """

    def __init__(self, info: DatasetInfo, split: str = "test") -> None:
        self.oracle = Oracle(info, split)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        whole, core, enhancing = np.moveaxis(self.oracle(image) > 0.5, -1, 0)
        return np.stack([core, enhancing, whole & ~core], axis=-1).astype(np.float32)


class OracleBackend(TorchBackend):
    """The torch backend (its real TensorFlow-free reader) with :class:`Oracle` as the model."""

    def __init__(self, info: DatasetInfo) -> None:
        self.oracle = Oracle(info)

    def predictor(self, model_file):
        return self.oracle
