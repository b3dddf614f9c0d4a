"""The PyTorch training steps: what :func:`distmis.trial.run_trial` calls for a torch trial.

In data mode Ray Train's ``TorchTrainer`` runs the loop on G workers with a process group
already set up (NCCL on GPUs, Gloo on CPUs): the model is wrapped in
``DistributedDataParallel`` by ``ray.train.torch.prepare_model`` and each worker reads its own
part of the shards; in experiment mode Ray Tune runs it as one trial. It matches the
TensorFlow steps (:mod:`distmis.backends.tensorflow.loop`): the same model, soft Dice loss,
Adam (``beta_1`` 0.9, ``eps`` 1e-7 as Keras), batches of ``batch_size_per_replica`` per
worker, ``ceil(train volumes / global batch)`` steps per epoch on every worker, validation on
the whole val split each epoch, with ``model.pt`` (:mod:`.checkpoint`) as the model.

Differences that are on purpose: a resumed trial restores Adam's moments too (the Keras loop
restarts them); ``precision`` (``bf16``/``fp16`` autocast) and ``channels_last_3d`` are
torch-only switches (:class:`~.options.TorchOptions`, the run's ``backend_options``). TensorFlow is never imported here: the shards are read by
:mod:`.tfrecord`.

:class:`TrainingStep` is one optimisation step as every trial runs it; the benchmarks
(``benchmarks/train.py --backend torch``, ``benchmarks/gpu_unet.py``) time that same object.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distmis import backends
from distmis.backends.torch.checkpoint import save_model
from distmis.backends.torch.data import EpochBatches
from distmis.backends.torch.data import to_device as batch_to_device
from distmis.backends.torch.devices import training_device_error
from distmis.backends.torch.losses import dice_coefficient, soft_dice_per_sample
from distmis.backends.torch.options import TorchOptions
from distmis.backends.torch.unet import build_unet_torch
from distmis.shards.info import DatasetInfo
from distmis.trial import (
    RUNNER_RAY_TRAIN,
    Runner,
    ScalarBoard,
    TrialConfig,
    TrialSteps,
    WorkerSettings,
    cpu_name,
    train_loop,
)
from distmis.worker_group import train_grid

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Keras' Adam defaults, so both backends run the same optimiser.
ADAM_BETA_1 = 0.9
ADAM_EPSILON = 1e-7
CHECKPOINT_FILE = "checkpoint.pt"


class KerasAdam(torch.optim.Adam):
    """torch's Adam with Keras' ``epsilon``: the update of ``tf_keras.optimizers.Adam``.

    Keras (``adaptive_epsilon=False``, its default) adds ``epsilon`` to ``sqrt(v)`` before the
    bias correction: ``Δ = lr·sqrt(1-β₂ᵗ)/(1-β₁ᵗ) · m / (sqrt(v) + ε)``; torch adds it after:
    ``Δ = lr/(1-β₁ᵗ) · m / (sqrt(v)/sqrt(1-β₂ᵗ) + ε)``. The two agree when torch's ``eps`` is
    ``ε / sqrt(1-β₂ᵗ)``, which this class sets before each step (32x ε at step 1, ε in the
    limit). On the first step a gradient of 1e-3 then moves its weight 0.3 % less far than
    torch's own Adam would, one of 1e-6 a quarter as far, as in Keras. With torch's placement
    the two backends' losses from the same weights were 2.8e-5 apart after 3 steps and 3.8e-4
    after 4, with this one 1e-7 and 2e-7 (tests/backends/test_train_parity.py).
    ``defaults["eps"]`` stays Keras' ``ε``.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, amsgrad: bool):
        super().__init__(params, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad)
        self.keras_epsilon = float(eps)

    def _next_step(self, group: dict) -> int:
        """The step number (1-based) this group's next update is, from Adam's own state."""
        for param in group["params"]:
            state = self.state.get(param)
            if state and "step" in state:
                return int(state["step"]) + 1
        return 1

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            bias_correction2 = 1.0 - group["betas"][1] ** self._next_step(group)
            group["eps"] = self.keras_epsilon / math.sqrt(bias_correction2)
        return super().step(closure)


def adam(model: nn.Module, lr: float, beta_2: float, amsgrad: bool) -> KerasAdam:
    """Adam as Keras configures and computes it (``beta_1`` 0.9, ``epsilon`` 1e-7 added to
    the uncorrected ``sqrt(v)``: :class:`KerasAdam`)."""
    return KerasAdam(
        model.parameters(), lr=lr, betas=(ADAM_BETA_1, beta_2), eps=ADAM_EPSILON, amsgrad=amsgrad
    )


def memory_format(channels_last_3d: bool) -> torch.memory_format:
    return torch.channels_last_3d if channels_last_3d else torch.contiguous_format


class TrainingStep:
    """One optimisation step: forward under autocast, soft Dice, backward, Adam, and the
    per-sample loss and Dice the epoch metrics sum.

    ``model`` is the bare U-Net (what is saved and validated); ``network`` what the forward
    pass calls: the model itself, or its DistributedDataParallel wrapper (gradients averaged
    over workers every step). ``precision``: ``fp32``, ``bf16``
    or ``fp16`` autocast; fp16 with a gradient scaler, since float16 gradients underflow
    without it (bf16 has float32's exponent range).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        network: nn.Module | None = None,
        precision: str = "fp32",
        channels_last_3d: bool = False,
    ) -> None:
        self.model = model
        self.network = network if network is not None else model
        self.optimizer = optimizer
        self.device = device
        self.memory_format = memory_format(channels_last_3d)
        self.autocast = dict(
            device_type=device.type,
            # A disabled autocast's dtype is unused; bf16 keeps torch from warning about it.
            dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
            enabled=precision != "fp32",
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def to_device(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of :class:`EpochBatches` (stored dtypes) as float32 on the device."""
        images, labels = batch
        return batch_to_device((images, labels), self.device, self.memory_format)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch already on the device: ``(loss (B,), dice (B, K))``, detached."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**self.autocast):
            probabilities = self.network(images)
        # The loss in float32 (soft_dice_per_sample casts): bf16 sums lose small tumours.
        loss_per_sample = soft_dice_per_sample(labels, probabilities)
        self.scaler.scale(loss_per_sample.mean()).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            return loss_per_sample.detach(), dice_coefficient(labels, probabilities)


def build_training_step(
    architecture: dict[str, Any],
    device: torch.device,
    *,
    seed: int,
    lr: float,
    beta_2: float,
    amsgrad: bool,
    precision: str = "fp32",
    channels_last_3d: bool = False,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainingStep:
    """A fresh U-Net (``build_unet_torch(**architecture, seed=seed)``) on ``device`` in the
    step's memory format, Keras-configured Adam, and the :class:`TrainingStep` over them.

    ``wrap`` turns the model into what the forward pass calls (DistributedDataParallel in data
    mode); the bare model stays ``step.model``. Trials and the benchmarks build steps here.
    """
    model = build_unet_torch(**architecture, seed=seed).to(
        device, memory_format=memory_format(channels_last_3d)
    )
    return TrainingStep(
        model,
        adam(model, lr, beta_2, amsgrad),
        device,
        network=wrap(model) if wrap is not None else None,
        precision=precision,
        channels_last_3d=channels_last_3d,
    )


def train_batches(
    step: TrainingStep, batches: Iterable[Sequence[torch.Tensor]], channels: int, log_every=None
) -> EpochSums:
    """Train on every ``(images (B, C, X, Y, Z), labels (B, K, X, Y, Z))`` of ``batches``,
    as an epoch does: each moved to the device, one step, its loss and Dice summed on the host.

    ``log_every(number, loss)``, if given, is called after every step (``debug`` progress).
    """
    step.network.train()
    sums = EpochSums(channels)
    for number, batch in enumerate(batches, start=1):
        loss, dice = step(*step.to_device(batch))
        sums.add(loss, dice)
        if log_every is not None:
            log_every(number, float(loss.mean()))
    return sums


def validate_batches(
    step: TrainingStep, batches: Iterable[Sequence[torch.Tensor]], channels: int
) -> EpochSums:
    """Score every ``(images, labels)`` of ``batches`` as validation does: the bare model in
    eval mode (BatchNorm normalises with its running statistics, as Keras' ``evaluate``), no
    gradients, the step's autocast; the per-sample loss and Dice summed on the host.

    The bare model, not the DDP wrapper: each worker validates its own records in as many
    batches as they take, so no collective may run per batch. The model's mode is restored
    afterwards, so a caller that trains next needs no ``train()`` of its own.
    """
    was_training = step.model.training
    step.model.eval()
    sums = EpochSums(channels)
    try:
        with torch.no_grad(), torch.autocast(**step.autocast):
            for batch in batches:
                images, labels = step.to_device(batch)
                probabilities = step.model(images)
                sums.add(
                    soft_dice_per_sample(labels, probabilities),
                    dice_coefficient(labels, probabilities),
                )
    finally:
        step.model.train(was_training)
    return sums


def _no_tensorflow_in_tensorboard() -> None:
    """Make TensorBoard's writer use its TF-free stub even though TensorFlow is installed.

    ``torch.utils.tensorboard`` imports ``tensorboard``, which imports all of TensorFlow when
    it can; ``tensorboard.compat.notf`` is TensorBoard's own switch for "never use TF".
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def choose_device(settings: WorkerSettings, runner: Runner) -> torch.device:
    """The device this worker trains on; a :class:`DeviceError` when GPUs are asked for and
    this worker cannot train on one (none seen, a driver too old for the build, a GPU the build
    has no kernels for), before anything trains.

    A Ray Train worker takes the GPU Ray gave it; a Ray Tune trial sees only its own GPU
    (Tune sets ``CUDA_VISIBLE_DEVICES``), and so does the local runner's one process, which
    trains on the first visible GPU.
    """
    if runner.kind == RUNNER_RAY_TRAIN:
        import ray.train.torch

        # The GPU Ray Train gave this worker (CPU without GPUs).
        device = ray.train.torch.get_device() if torch.cuda.is_available() else None
    else:
        device = torch.device("cuda", 0) if settings.use_gpu else torch.device("cpu")
    if settings.use_gpu:
        # A GPU timing that is really a CPU one is worse than no timing.
        error = training_device_error(device or torch.device("cuda", 0))
        if error is not None:
            raise error
    return device or torch.device("cpu")


def training_device(device: torch.device) -> tuple[str, str]:
    """``(type, name)`` of ``device``: ``("gpu", "NVIDIA H100 80GB HBM3")`` or the CPU's."""
    if device.type == "cuda":
        return "gpu", torch.cuda.get_device_name(device)
    return "cpu", cpu_name()


def describe_devices(device: torch.device) -> list[str]:
    kind, name = training_device(device)
    return [f"{kind.upper()}:{name}"]


def limit_threads(cpus: int) -> None:
    """Keep this worker on its share of the cores, so G CPU workers do not oversubscribe."""
    torch.set_num_threads(cpus)
    # Raises once inter-op work has run in this process (a retried trial in a reused worker).
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(max(1, min(2, cpus)))


def _all_reduce_sums(values: Sequence[float], device, distributed: bool) -> list[float]:
    """Sum ``values`` over the data-parallel workers (as float64); as is for one worker."""
    if not distributed:
        return [float(v) for v in values]
    import torch.distributed as dist

    # NCCL only reduces GPU tensors; Gloo CPU ones. float64 keeps the sums of 10⁴ samples exact.
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    tensor = torch.tensor(list(values), dtype=dtype, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class EpochSums:
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


class _WriterBoard(ScalarBoard):
    def __init__(self, directory: Path) -> None:
        _no_tensorflow_in_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(directory))

    def add_scalar(self, name: str, value: float, epoch: int) -> None:
        self._writer.add_scalar(name, value, epoch)

    def close(self) -> None:
        self._writer.close()


class TorchTrialSteps(TrialSteps):
    """A torch trial: the rank's batch streams, the model (DDP-wrapped in data mode) and its
    :class:`TrainingStep`."""

    model_file = backends.get("torch").trial_model_file

    def __init__(self, trial: TrialConfig, runner: Runner) -> None:
        settings = trial.settings
        options = TorchOptions.from_mapping(settings.backend_options)
        limit_threads(settings.cpus_per_worker)
        self.trial_id, self.debug = trial.trial_id, settings.debug
        self.rank = runner.rank
        # All-reduced metrics whenever a Ray Train run has several workers (data, hybrid).
        self.distributed = runner.kind == RUNNER_RAY_TRAIN and runner.world_size > 1
        self.device = choose_device(settings, runner)
        info = DatasetInfo.from_dir(Path(settings.tfrecord_dir))
        self.channels = list(info.label_channels)
        self.global_batch = settings.batch_size_per_replica * runner.world_size
        self.steps_per_epoch = max(1, math.ceil(info.count("train") / self.global_batch))
        self.train_batches, self.val_batches = (
            EpochBatches(
                settings.tfrecord_dir,
                split,
                settings.batch_size_per_replica,
                shuffle=split == "train",
                seed=settings.seed,
                # Training: exactly steps_per_epoch batches on every rank; validation: one
                # exact pass over this rank's part of the val split.
                steps_per_epoch=self.steps_per_epoch if split == "train" else None,
                rank=runner.rank,
                world_size=runner.world_size,
                cache=settings.cache,
                cache_scope=settings.cache_scope,
                loader_workers=options.loader_workers,
                shuffle_buffer=settings.shuffle_buffer,
                pin_memory=self.device.type == "cuda",
            )
            for split in ("train", "val")
        )
        self.architecture = {
            "in_channels": int(info.image_shape[-1]),
            "out_channels": len(self.channels),
            **trial.architecture(),
        }
        wrap = None
        if runner.kind == RUNNER_RAY_TRAIN:
            import ray.train.torch

            # DistributedDataParallel for G > 1 (gradients averaged over workers every step).
            def wrap(model: nn.Module) -> nn.Module:
                return ray.train.torch.prepare_model(model, move_to_device=False)

        self.step = build_training_step(
            self.architecture,
            self.device,
            seed=settings.seed,
            precision=options.precision,
            channels_last_3d=options.channels_last_3d,
            wrap=wrap,
            **trial.adam(),
        )
        self.model, self.optimizer = self.step.model, self.step.optimizer
        self.devices = describe_devices(self.device)
        self.device_type, self.device_name = training_device(self.device)
        self.volumes_read = 0

    def restore(self, directory: Path) -> None:
        state = torch.load(directory / CHECKPOINT_FILE, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        def progress(number: int, loss: float) -> None:
            log.info(
                "%s epoch %d step %d/%d loss %.4f",
                self.trial_id,
                epoch + 1,
                number,
                self.steps_per_epoch,
                loss,
            )

        batches = self.train_batches.epoch(epoch)
        sums = train_batches(
            self.step, batches, len(self.channels), progress if self.debug else None
        )
        self.volumes_read += sums.count
        return sums.metrics(self.channels, "", self.device, self.distributed)

    def validate(self, epoch: int) -> dict[str, float]:
        sums = validate_batches(self.step, self.val_batches.epoch(epoch), len(self.channels))
        return sums.metrics(self.channels, "val_", self.device, self.distributed)

    def save_checkpoint(self, directory: Path) -> None:
        if self.rank == 0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, directory / CHECKPOINT_FILE)

    def save_model(self, path: Path | None) -> None:
        if path is not None:
            save_model(path, self.model, self.architecture)

    def open_board(self, directory: Path) -> ScalarBoard:
        return _WriterBoard(directory)

    def finish_fields(self) -> dict[str, Any]:
        return {"train_volumes_read": self.volumes_read}


train_loop_per_worker = train_loop(TorchTrialSteps)
"""What Ray runs per worker (hybrid mode) or per trial (experiment mode)."""
train_grid_per_worker = train_grid(TorchTrialSteps)
"""What Ray Train runs per worker in data mode: the whole grid in one worker group."""


# The backend's TrialSteps class, under the name distmis.backends.base.Backend looks up.
TRIAL_STEPS = TorchTrialSteps
