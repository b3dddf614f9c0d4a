"""The PyTorch per-worker training function both parallelism modes run.

``train_loop_per_worker(config)`` trains one configuration with the torch U-Net of
:mod:`distmis.torch_backend.unet`. In data mode Ray Train's ``TorchTrainer`` runs it on G
workers with a process group already set up (NCCL on GPUs, Gloo on CPUs): the model is
wrapped in ``DistributedDataParallel`` by ``ray.train.torch.prepare_model`` and each worker
reads its own part of the shards; in experiment mode Ray Tune runs it as one trial. It is the
TensorFlow loop (:mod:`distmis.train.loop`) step for step: the same model, soft Dice loss,
Adam (``beta_1`` 0.9, ``eps`` 1e-7 as Keras), batches of ``batch_size_per_replica`` per
worker, ``ceil(train volumes / global batch)`` steps per epoch on every worker, validation on
the whole val split each epoch, metrics reported every epoch with a checkpoint, and the same
files left behind (:mod:`distmis.train.worker`), with ``model.pt``
(:mod:`distmis.torch_backend.checkpoint`) as the model.

Differences that are on purpose: a resumed trial restores Adam's moments too (the Keras loop
restarts them); ``precision`` (``bf16``/``fp16`` autocast) and ``channels_last_3d`` are
torch-only switches. TensorFlow is never imported here: the shards are read by
:mod:`distmis.torch_backend.tfrecord`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import sys
import tempfile
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distmis.train import worker

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
# Keras' Adam defaults, so both backends run the same optimiser.
ADAM_BETA_1 = 0.9
ADAM_EPSILON = 1e-7
CHECKPOINT_FILE = "checkpoint.pt"


def _no_tensorflow_in_tensorboard() -> None:
    """Make TensorBoard's writer use its TF-free stub even though TensorFlow is installed.

    ``torch.utils.tensorboard`` imports ``tensorboard``, which imports all of TensorFlow when
    it can; ``tensorboard.compat.notf`` is TensorBoard's own switch for "never use TF".
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def _device(settings: Mapping[str, Any]):
    import torch

    if settings["use_gpu"] and not torch.cuda.is_available():
        # TensorFlow would quietly train on the CPU; a GPU timing that is really a CPU one is
        # worse than no timing.
        raise RuntimeError(
            f"use_gpu is true but PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees "
            f"no CUDA device on {socket.gethostname()} (CUDA_VISIBLE_DEVICES="
            f"{','.join(worker.gpu_ids()) or 'unset'}); install a CUDA build of torch or set "
            "train.use_gpu: false"
        )
    if settings["mode"] == "data":
        import ray.train.torch

        # The GPU Ray Train gave this worker (CPU without GPUs).
        return ray.train.torch.get_device()
    if settings["use_gpu"]:
        # Ray Tune sets CUDA_VISIBLE_DEVICES to the trial's one GPU.
        return torch.device("cuda", 0)
    return torch.device("cpu")


def describe_devices(device) -> list[str]:
    import torch

    if device.type == "cuda":
        return [f"GPU:{torch.cuda.get_device_name(device)}"]
    return [f"CPU:{worker.cpu_name()}"]


def _limit_threads(cpus: int) -> None:
    """Keep this worker on its share of the cores, so G CPU workers do not oversubscribe."""
    import torch

    torch.set_num_threads(cpus)
    # Raises once inter-op work has run in this process (a retried trial in a reused worker).
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(max(1, min(2, cpus)))


def _all_reduce_sums(values: Sequence[float], device, distributed: bool) -> list[float]:
    """Sum ``values`` over the data-parallel workers (as float64); as is for one worker."""
    if not distributed:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    # NCCL only reduces GPU tensors; Gloo CPU ones. float64 keeps the sums of 10⁴ samples exact.
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    tensor = torch.tensor(list(values), dtype=dtype, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class _EpochSums:
    """Per-sample sums of loss and Dice (mean and per channel) and the sample count."""

    def __init__(self, channels: int) -> None:
        self.loss = 0.0
        self.dice = [0.0] * channels
        self.count = 0

    def add(self, loss_per_sample, dice_per_sample) -> None:
        self.loss += float(loss_per_sample.sum())
        per_channel = dice_per_sample.sum(dim=0).tolist()  # (K,)
        self.dice = [a + b for a, b in zip(self.dice, per_channel, strict=True)]
        self.count += int(loss_per_sample.shape[0])

    def metrics(
        self, names: Sequence[str], prefix: str, device, distributed: bool
    ) -> dict[str, float]:
        """Means over every sample of every worker, named as the Keras loop names them."""
        loss, *dice, count = _all_reduce_sums(
            [self.loss, *self.dice, self.count], device, distributed
        )
        if count == 0:
            raise RuntimeError(f"no {prefix or 'training'} samples were seen by any worker")
        metrics = {f"{prefix}loss": loss / count, f"{prefix}dice": sum(dice) / count / len(dice)}
        metrics.update({f"{prefix}dice_{n}": d / count for n, d in zip(names, dice, strict=True)})
        return metrics


def _train(config: Mapping[str, Any], started: float) -> None:
    """Train one configuration (``config["hparams"]``) with ``config["settings"]``."""
    import torch

    from distmis.data.info import DatasetInfo
    from distmis.torch_backend.checkpoint import save_model
    from distmis.torch_backend.data import EpochBatches
    from distmis.torch_backend.losses import dice_coefficient, soft_dice_per_sample
    from distmis.torch_backend.unet import build_unet_torch

    hparams, settings = config["hparams"], config["settings"]
    _limit_threads(settings["cpus_per_worker"])
    report, get_checkpoint, rank, world_size = worker.reporter(settings["mode"])
    Checkpoint = worker.checkpoint_type(settings["mode"])  # noqa: N806 - a class
    if worker.report_if_finished(config, report):
        return
    worker.start_attempt(config, rank, started)
    trial_dir = worker.trial_dir(config)
    distributed = settings["mode"] == "data" and world_size > 1
    device = _device(settings)

    info = DatasetInfo.from_dir(Path(settings["tfrecord_dir"]))
    channels = list(info.label_channels)
    per_replica = settings["batch_size_per_replica"]
    global_batch = per_replica * world_size
    train_steps = max(1, math.ceil(info.count("train") / global_batch))
    seed = settings["seed"]
    common = dict(
        rank=rank,
        world_size=world_size,
        cache=settings["cache"],
        loader_workers=settings["loader_workers"],
    )
    train_batches = EpochBatches(
        settings["tfrecord_dir"],
        "train",
        per_replica,
        shuffle=True,
        seed=seed,
        steps_per_epoch=train_steps,
        **common,
    )
    # One exact pass over this worker's part of the val split per epoch.
    val_batches = EpochBatches(
        settings["tfrecord_dir"],
        "val",
        per_replica,
        shuffle=False,
        seed=seed,
        steps_per_epoch=None,
        **common,
    )

    architecture = {
        "in_channels": int(info.image_shape[-1]),
        "out_channels": len(channels),
        "depth": settings["depth"],
        "base_filters": settings["base_filters"],
        "norm": hparams["norm"],
    }
    memory_format = (
        torch.channels_last_3d if settings["channels_last_3d"] else torch.contiguous_format
    )
    model = build_unet_torch(**architecture, seed=seed).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config["lr_effective"],
        betas=(ADAM_BETA_1, hparams["beta_2"]),
        eps=ADAM_EPSILON,
        amsgrad=hparams["amsgrad"],
    )
    initial_epoch = 0
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        initial_epoch = state["epoch"]
        log.info("resuming %s from epoch %d", config["trial_id"], initial_epoch)
    trained = model
    if settings["mode"] == "data":
        import ray.train.torch

        # DistributedDataParallel for G > 1 (gradients averaged over workers every step).
        trained = ray.train.torch.prepare_model(model, move_to_device=False)

    precision = settings["precision"]
    autocast = dict(
        device_type=device.type,
        # The dtype of a disabled autocast is not used; bf16 keeps torch from warning about it.
        dtype=getattr(torch, AUTOCAST_DTYPES.get(precision, "bfloat16")),
        enabled=precision != "fp32",
    )
    # float16 gradients underflow without loss scaling; bf16 has float32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def to_device(batch):
        images, labels = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        return images, labels.to(device, non_blocking=True)

    worker.write_worker_file(
        config,
        rank=rank,
        world_size=world_size,
        per_replica=per_replica,
        global_batch=global_batch,
        steps=train_steps,
        devices=describe_devices(device),
    )
    board = None
    if rank == 0 and not settings["debug"]:
        _no_tensorflow_in_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        board = SummaryWriter(str(Path(settings["out_dir"]) / "tensorboard" / config["trial_id"]))

    fit_started = time.time()
    final: dict[str, float] = {}
    history: list[dict[str, float]] = []
    volumes_read = 0
    for epoch in range(initial_epoch, settings["epochs"]):
        epoch_started = time.time()
        trained.train()
        train_sums = _EpochSums(len(channels))
        for step, batch in enumerate(train_batches.epoch(epoch), start=1):
            images, labels = to_device(batch)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(**autocast):
                probabilities = trained(images)
            # The loss in float32 (soft_dice_per_sample casts): bf16 sums lose small tumours.
            loss_per_sample = soft_dice_per_sample(labels, probabilities)
            scaler.scale(loss_per_sample.mean()).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                train_sums.add(loss_per_sample.detach(), dice_coefficient(labels, probabilities))
            if settings["debug"]:
                log.info(
                    "%s epoch %d step %d/%d loss %.4f",
                    config["trial_id"],
                    epoch + 1,
                    step,
                    train_steps,
                    float(loss_per_sample.mean()),
                )
        # Validation runs the bare model, not the DDP wrapper: each worker validates its own
        # records in as many batches as they take, so no collective may run per batch.
        model.eval()
        val_sums = _EpochSums(len(channels))
        with torch.no_grad(), torch.autocast(**autocast):
            for batch in val_batches.epoch(epoch):
                images, labels = to_device(batch)
                probabilities = model(images)
                val_sums.add(
                    soft_dice_per_sample(labels, probabilities),
                    dice_coefficient(labels, probabilities),
                )
        volumes_read += train_sums.count
        final = {
            **train_sums.metrics(channels, "", device, distributed),
            **val_sums.metrics(channels, "val_", device, distributed),
        }
        history.append(final)
        log.info(
            "%s epoch %d/%d: %s (%.1f s)",
            config["trial_id"],
            epoch + 1,
            settings["epochs"],
            " ".join(f"{k} {v:.4f}" for k, v in final.items()),
            time.time() - epoch_started,
        )
        if board is not None:
            for name, value in final.items():
                board.add_scalar(name, value, epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            ray_checkpoint = None
            if rank == 0:
                state = {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                }
                torch.save(state, Path(tmp) / CHECKPOINT_FILE)
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch + 1}))
                ray_checkpoint = Checkpoint.from_directory(tmp)
            report({**final, "epoch": epoch + 1, "time": time.time()}, checkpoint=ray_checkpoint)
    fit_ended = time.time()
    if board is not None:
        board.close()
    worker.add_to_worker_file(config, rank, train_volumes_read=volumes_read)
    if rank == 0:
        save_model(trial_dir / worker.MODEL_FILES["torch"], model, architecture)
        worker.write_result(
            config,
            started=started,
            fit_started=fit_started,
            fit_ended=fit_ended,
            steps_per_epoch=train_steps,
            global_batch=global_batch,
            resumed_from_epoch=initial_epoch,
            metrics=final,
            history=history,
            devices=describe_devices(device),
        )


train_loop_per_worker = worker.recording_failure(_train)
