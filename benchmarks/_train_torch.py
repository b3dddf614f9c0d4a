"""``benchmarks/train.py --backend torch``: the torch trial's own step
(:func:`~distmis.backends.torch.loop.build_training_step`,
:func:`~distmis.backends.torch.loop.train_batches`) fed by tensors in memory or by ``EpochBatches``. TensorFlow is never imported here (the conversion runs
it in its own processes)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator

import torch
from _training import SEED, BenchBackend, StepSettings, node_cache_scope

from distmis.backends.torch.data import EpochBatches
from distmis.backends.torch.loop import build_training_step, limit_threads, train_batches
from distmis.backends.torch.options import TorchOptions
from distmis.backends.torch.unet import count_parameters
from distmis.shards.info import DatasetInfo

CPU = torch.device("cpu")


class InMemoryBatches:
    """The train split as tensors ``(N, C, X, Y, Z)``, ``(N, K, X, Y, Z)`` float32, read once
    in split order by the pipeline's own reader.

    ``epoch(e)`` gathers batches of ``batch`` from a seeded permutation, pass after pass
    without end, as Keras' ``fit(shuffle=True)`` gathers from numpy arrays.
    """

    def __init__(self, tfrecord_dir: str, batch: int) -> None:
        reader = EpochBatches(
            tfrecord_dir,
            "train",
            batch,
            shuffle=False,
            seed=SEED,
            cache=False,
            steps_per_epoch=None,
        )
        images, labels = zip(*reader.epoch(0), strict=True)
        self.images, self.labels = torch.cat(images), torch.cat(labels)
        self.batch = batch
        self.nbytes = self.images.nbytes + self.labels.nbytes

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(SEED + epoch)
        passes = (torch.randperm(len(self.images), generator=generator) for _ in itertools.count())
        indices = itertools.chain.from_iterable(passes)
        while True:
            index = torch.stack(list(itertools.islice(indices, self.batch)))
            yield self.images[index], self.labels[index]


class TorchBench(BenchBackend):
    name = "torch"
    step_name = "TrainingStep"
    pipeline_name = "EpochBatches"
    dists = ("numpy", "torch", "ray")
    # What PyTorch's OpenMP and oneDNN read to place threads or pick kernels.
    env_keys = (
        "KMP_AFFINITY",
        "KMP_BLOCKTIME",
        "OMP_WAIT_POLICY",
        "ONEDNN_MAX_CPU_ISA",
        "DNNL_MAX_CPU_ISA",
    )

    def __init__(self, cpus: int, info: DatasetInfo, settings: StepSettings) -> None:
        limit_threads(cpus)  # the trial's own call, first: before anything runs inter-op work
        self.settings = settings
        self.channels = len(info.label_channels)
        self.options = TorchOptions.from_mapping(settings.backend_options)
        architecture = {
            "in_channels": int(info.image_shape[-1]),
            "out_channels": self.channels,
            **settings.architecture(),
        }
        self.step = build_training_step(
            architecture,
            CPU,
            seed=settings.seed,
            precision=self.options.precision,
            channels_last_3d=self.options.channels_last_3d,
            **settings.optimizer(),
        )

    @classmethod
    def runtime_lines(cls) -> list[tuple[str, str]]:
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except AttributeError:
            capability = "unknown"
        try:
            bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            bf16 = "unknown"
        parallel = next(
            (
                line.split(":", 1)[1].strip()
                for line in torch.__config__.parallel_info().splitlines()
                if line.startswith("ATen parallel backend:")
            ),
            "unknown",
        )
        return [
            (
                "torch cpu",
                f"ATen kernels {capability}; oneDNN {torch.backends.mkldnn.is_available()}"
                f" (bf16 supported: {bf16}); parallel backend {parallel}",
            )
        ]

    def thread_pools(self) -> tuple[int, int]:
        return torch.get_num_threads(), torch.get_num_interop_threads()

    def notes(self) -> dict[str, object]:
        return {"tensorflow loaded": "tensorflow" in sys.modules}

    def describe(self) -> str:
        s, optimizer, options = self.settings, self.step.optimizer, self.options
        memory = "channels_last_3d" if options.channels_last_3d else "contiguous (channels first)"
        return (
            f"torch UNet3D depth {s.depth} base {s.base_filters} {s.hparams.norm} norm,"
            f" {count_parameters(self.step.network)} parameters; the loop's TrainingStep with"
            f" {type(optimizer).__name__} {optimizer.defaults['betas']}"
            f" eps {optimizer.defaults['eps']:g} lr {s.hparams.lr:g}; precision {options.precision}"
            f" (autocast {'on' if self.step.autocast['enabled'] else 'off'}); memory {memory}"
        )

    def weights_checksum(self) -> float:
        state = self.step.network.state_dict().values()
        return float(sum(t.double().abs().sum() for t in state))

    def in_memory(self, info: DatasetInfo, batch: int) -> tuple[InMemoryBatches, int]:
        batches = InMemoryBatches(str(info.root), batch)
        return batches, batches.nbytes

    def pipeline(self, info: DatasetInfo, batch: int, steps_per_epoch: int) -> EpochBatches:
        return EpochBatches(
            info.root,
            "train",
            batch,
            shuffle=True,
            seed=SEED,
            cache=True,
            cache_scope=node_cache_scope(),
            steps_per_epoch=steps_per_epoch,
        )

    def train(self, feed: EpochBatches | InMemoryBatches, steps: int, epoch: int) -> float:
        sums = train_batches(self.step, itertools.islice(feed.epoch(epoch), steps), self.channels)
        return sums.loss / sums.count

    def batch_sizes(self, feed: EpochBatches, epoch: int) -> Iterator[int]:
        return (int(images.shape[0]) for images, _labels in feed.epoch(epoch))


BENCH = TorchBench
