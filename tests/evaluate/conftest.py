"""A tiny converted dataset shared by the slow evaluation tests."""

from __future__ import annotations

import pytest

from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from tests.evaluate.helpers import SYNTHETIC_SOURCE_SHAPE, SYNTHETIC_STORED_SHAPE


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """``(MSD task folder, tfrecord dir)`` of 8 synthetic cases, 2 of them in ``test``."""
    root = tmp_path_factory.mktemp("eval")
    task = synthesize_dataset(root / "msd", 8, SYNTHETIC_SOURCE_SHAPE, 3, progress=False)
    params = ConvertParams(
        shape=SYNTHETIC_STORED_SHAPE, label_mode="regions", split=(0.5, 0.25, 0.25)
    )
    convert_dataset(task, root / "tfrecords", params, workers=1, progress=False)
    return task, root / "tfrecords"
