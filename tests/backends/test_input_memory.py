"""A streaming worker's memory is bounded by its buffers, not by the split: for each backend,
one training epoch over a split of few and of many mid-size records, each in a fresh
process, must reach the same peak RSS (within a fraction of the extra records' bytes).

Not a timing test: the bound is structural (no growth with N), with generous slack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards.info import DatasetInfo

REPO = Path(__file__).resolve().parents[2]
# 96x96x64x4 float32 + a uint8 label: 9.97 MB a record, so 30 extra records are ~300 MB.
STORED_SHAPE = (96, 96, 64)
FEW, MANY = 6, 36
SHUFFLE_BUFFER = 2

EPOCH = {
    "tensorflow": """
        from distmis.backends.tensorflow.loop import limit_threads
        limit_threads(1)
        from distmis.backends.tensorflow.dataset import make_dataset
        data = make_dataset(info, "train", 2, shuffle=True, seed=0,
                            shuffle_buffer=SHUFFLE_BUFFER, parallel_calls=1)
        batches = (image.numpy() for image, _ in data)
    """,
    "torch": """
        from distmis.backends.torch.data import EpochBatches
        data = EpochBatches(info.root, "train", 2, shuffle=True, seed=0, cache=False,
                            steps_per_epoch=None, shuffle_buffer=SHUFFLE_BUFFER)
        batches = (images.numpy() for images, _ in data.epoch(0))
    """,
}

SCRIPT = """
import json, resource, sys
from pathlib import Path
from distmis.shards.info import DatasetInfo

SHUFFLE_BUFFER = {buffer}
info = DatasetInfo.from_dir(Path(sys.argv[1]))
{epoch}
seen = 0
for images in batches:
    seen += images.shape[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"records": seen, "peak": peak}}))
"""


def _dataset(root: Path, train_records: int) -> DatasetInfo:
    cases = train_records + 2
    task = synthesize_dataset(root / "msd", cases, (24, 24, 20), 0, progress=False)
    split = (train_records / cases, 1 - train_records / cases, 0.0)
    params = ConvertParams(shape=STORED_SHAPE, split=split, shards=(3, 1, 1))
    convert_dataset(task, root / "tfrecords", params, progress=False)
    info = DatasetInfo.from_dir(root / "tfrecords")
    assert info.count("train") == train_records
    return info


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[int, DatasetInfo]:
    return {n: _dataset(tmp_path_factory.mktemp(f"n{n}"), n) for n in (FEW, MANY)}


def _epoch_peak(backend: str, info: DatasetInfo) -> dict:
    script = SCRIPT.format(buffer=SHUFFLE_BUFFER, epoch=textwrap.dedent(EPOCH[backend]))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(info.root)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_streaming_peak_rss_does_not_grow_with_the_split(splits, backend):
    record_bytes = np.prod(STORED_SHAPE) * (4 * 4 + 1)
    few, many = (_epoch_peak(backend, splits[n]) for n in (FEW, MANY))
    assert (few["records"], many["records"]) == (FEW, MANY)
    growth = many["peak"] - few["peak"]
    # Holding the split (as tf.data's old whole-split shuffle buffer did) grows by ~300 MB.
    extra = (MANY - FEW) * record_bytes
    assert growth < 0.25 * extra, (
        f"{backend}: peak RSS {few['peak'] / 1e6:.0f} MB with {FEW} records, "
        f"{many['peak'] / 1e6:.0f} MB with {MANY} (extra records: {extra / 1e6:.0f} MB)"
    )
