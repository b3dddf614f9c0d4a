"""The PyTorch backend: the U-Net, its loss, a TFRecord reader and the training steps.

Nothing here imports TensorFlow or Ray at module level, so these modules run on machines that
only have PyTorch (e.g. a GPU node for ``benchmarks/gpu_unet.py``):

- :mod:`.unet`: :func:`~.unet.build_unet_torch`, the same architecture and parameter count as
  the Keras one (:mod:`distmis.backends.tensorflow.unet`), channels-first ``(B, C, X, Y, Z)``;
- :mod:`.losses`: soft Dice loss and thresholded Dice, as :mod:`distmis.backends.tensorflow.losses`;
- :mod:`.tfrecord`: reads the shards of :mod:`distmis.shards.records` (CRC-checked);
- :mod:`.data`: :class:`~.data.EpochBatches`, the per-epoch batches of one training worker,
  with the tf.data pipeline's sharding, shuffling, caching and repeating;
- :mod:`.options`: :class:`~.options.TorchOptions`, the switches of ``train.torch``;
- :mod:`.checkpoint`: the saved model (``.pt``: architecture + weights);
- :mod:`.loop`: the training step and the per-trial steps the shared skeleton
  (:mod:`distmis.trial`) calls;
- :mod:`.predict`: a saved ``.pt`` model as a predictor.

The package itself imports nothing heavy; torch is imported by the modules above.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distmis.backends.base import Backend, Predictor
from distmis.backends.torch.options import TorchOptions
from distmis.errors import ConfigError

if TYPE_CHECKING:
    from distmis.shards.info import DatasetInfo
    from distmis.shards.records import Record

log = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    # A process checks the same switches at the config and at each run's settings (and each
    # replace() of them): one warning is enough.
    log.warning(message)


class TorchBackend(Backend):
    """PyTorch under ``DistributedDataParallel`` in data mode (NCCL on GPUs, Gloo on CPUs)."""

    name = "torch"
    model_suffix = ".pt"
    loop_module = "distmis.backends.torch.loop"

    def options(self, train: Mapping[str, Any]) -> dict[str, Any]:
        switches = train["torch"]
        options = {f.name: switches[f.name] for f in fields(TorchOptions)}
        if options["loader_workers"] is None:
            # The worker's cores beyond the one that trains, each a loader process.
            options["loader_workers"] = max(0, train["cpus_per_worker"] - 1)
        return options

    def check_options(self, options: Mapping[str, Any], *, use_gpu: bool) -> None:
        switches = TorchOptions.from_mapping(options)
        problem = switches.device_problem(use_gpu)
        if problem:
            raise ConfigError(problem)
        warning = switches.device_warning(use_gpu)
        if warning:
            _warn_once(warning)

    def ray_trainer(
        self,
        train_loop_config: dict,
        *,
        scaling_config: Any,
        run_config: Any,
        use_gpu: bool,
        whole_grid: bool = False,
    ) -> Any:
        from ray.train.torch import TorchConfig, TorchTrainer

        return TorchTrainer(
            self.train_grid_per_worker() if whole_grid else self.train_loop_per_worker(),
            train_loop_config=train_loop_config,
            scaling_config=scaling_config,
            run_config=run_config,
            # NCCL all-reduces GPU tensors, Gloo CPU ones (the CPU demo and CI).
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        )

    def predictor(self, model_file: Path) -> Predictor:
        from distmis.backends.torch.predict import torch_predictor

        return torch_predictor(model_file)

    def read_records(self, info: DatasetInfo, split: str) -> Iterator[Record]:
        from distmis.shards.parts import rank_part, read_part

        if split not in info.splits:
            raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
        part = rank_part(info.splits[split], 0, 1)
        return read_part(part, info.image_dtype, len(info.label_channels), info.compression)

    def device_report(self, *, check_nccl: bool) -> dict[str, Any]:
        from distmis.backends.torch.devices import report

        return report(check_nccl=check_nccl)

    def device_problems(
        self, facts: Mapping[str, Any], *, expected_gpus: int, driver: str | None
    ) -> list[str]:
        from distmis.backends.torch.devices import problems

        return problems(dict(facts), expected_gpus=expected_gpus, driver=driver)

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__}


BACKEND = TorchBackend()
