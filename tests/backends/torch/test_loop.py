"""Pieces of the PyTorch training loop that need no Ray: device choice and epoch metrics."""

from __future__ import annotations

import pytest
import torch

from distmis.backends.torch.loop import EpochSums, choose_device
from distmis.backends.torch.losses import dice_coefficient, soft_dice_per_sample
from distmis.config import validate_config
from distmis.errors import DeviceError
from distmis.train.settings import TrainSettings
from distmis.trial import Runner


def worker_settings(tmp_path, **train):
    config = validate_config({"train": {"backend": "torch", **train}})
    return TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tmp_path, out_dir=tmp_path
    ).worker_settings()


LOCAL = Runner(
    0, 1, report=lambda *a, **k: None, get_checkpoint=lambda: None, checkpoint_type=object
)


def test_use_gpu_without_cuda_is_an_error_not_a_silent_cpu_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # This CI's torch is a CPU build: the one line says so and names the CUDA builds.
    with pytest.raises(DeviceError, match=r"GPU check failed on .*: PyTorch .* CPU-only build"):
        choose_device(worker_settings(tmp_path, use_gpu=True), LOCAL)
    # Outside Ray Train (a Tune trial, the local runner) the CPU without use_gpu.
    assert choose_device(worker_settings(tmp_path), LOCAL) == torch.device("cpu")


def test_epoch_metrics_are_per_sample_means_whatever_the_batching():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(5, 2, 4, 4, 4, generator=generator) > 0.7).float()
    probabilities = torch.rand(5, 2, 4, 4, 4, generator=generator)
    whole, split = EpochSums(2), EpochSums(2)
    whole.add(soft_dice_per_sample(labels, probabilities), dice_coefficient(labels, probabilities))
    for part in (slice(0, 2), slice(2, 3), slice(3, 5)):  # uneven batches, as a last short one
        split.add(
            soft_dice_per_sample(labels[part], probabilities[part]),
            dice_coefficient(labels[part], probabilities[part]),
        )
    cpu = torch.device("cpu")
    expected = whole.metrics(["WT", "TC"], "val_", cpu, distributed=False)
    assert split.metrics(["WT", "TC"], "val_", cpu, distributed=False) == pytest.approx(expected)
    per_channel = dice_coefficient(labels, probabilities).mean(dim=0)
    assert expected["val_dice_WT"] == pytest.approx(float(per_channel[0]))
    assert expected["val_dice"] == pytest.approx(float(per_channel.mean()))
    assert expected["val_loss"] == pytest.approx(
        float(soft_dice_per_sample(labels, probabilities).mean())
    )
    with pytest.raises(RuntimeError, match="no training samples"):
        EpochSums(1).metrics(["tumour"], "", cpu, distributed=False)
