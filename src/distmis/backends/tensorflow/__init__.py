"""The TensorFlow backend: the tf_keras U-Net (:mod:`.unet`), its loss and metrics
(:mod:`.losses`), the tf.data pipeline (:mod:`.dataset`), the training steps run by the shared
trial skeleton (:mod:`.loop`) and the ``.keras`` predictor (:mod:`.predict`).

Keras version
-------------
The project uses ``tf_keras`` (the legacy Keras 2 package, tf-keras 2.21), imported as
``import tf_keras as keras``, never Keras 3. Keras 3's ``model.fit`` under
``MultiWorkerMirroredStrategy`` inside Ray Train's ``TensorflowTrainer`` failed here with
"Attempt to convert a value (PerReplica...) to a Tensor", while tf_keras trained with two
workers.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` and, unless already set,
``TF_ENABLE_ONEDNN_OPTS=1`` (see :data:`ONEDNN_ENV`: it bounds a full-size step's memory);
this is the only place that sets them. TensorFlow
reads that variable when it is first imported (it decides where ``tensorflow.keras.*`` imports
resolve) and again when ``tf.keras`` is first touched, so third-party code that says
``tf.keras`` -- such as Ray's Keras callbacks -- gets the same tf_keras classes as our model.
Every module that imports tensorflow lives in this package, so importing any of them sets the
variable first; :data:`WORKER_ENV` (both variables) is :attr:`TensorflowBackend.worker_env`,
which Ray's ``runtime_env`` passes to worker processes before their first import as well.

The package itself imports neither tensorflow nor keras, so importing it is cheap.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distmis.backends.base import Backend, Predictor
from distmis.errors import ConfigError

if TYPE_CHECKING:
    from distmis.data.info import DatasetInfo
    from distmis.data.records import Record

log = logging.getLogger(__name__)

LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}
# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI/BF16,
# AVX_VNNI or AMX. Elsewhere a Conv3D's gradients run Conv3DCustomBackprop{Input,Filter}Op,
# which for a batch of one build an im2col buffer of the whole volume (27 x C_in floats per
# voxel): ~30 GB for one 240x240x152 step instead of ~5-6 GB (benchmarks/step_memory.py,
# README "Sizing a node"). A value already set wins.
ONEDNN_ENV = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")}
WORKER_ENV = {**LEGACY_KERAS_ENV, **ONEDNN_ENV}


def _use_legacy_keras() -> None:
    already = os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
    os.environ.update(WORKER_ENV)
    if "tensorflow" in sys.modules and not already:
        # Too late for `from tensorflow.keras... import` paths, which TensorFlow fixed at its
        # own import; `tf.keras` attribute access and our `tf_keras` imports still work.
        log.warning(
            "tensorflow was imported before distmis.backends.tensorflow set TF_USE_LEGACY_KERAS=1; "
            "`from tensorflow.keras import ...` may still resolve to Keras 3"
        )


_use_legacy_keras()


class TensorflowBackend(Backend):
    """tf_keras under ``tf.distribute`` (``MultiWorkerMirroredStrategy`` in data mode)."""

    name = "tensorflow"
    model_suffix = ".keras"
    worker_env = WORKER_ENV

    def options(self, train: Mapping[str, Any]) -> dict[str, Any]:
        # train.torch's switches mean nothing to Keras; it trains in float32, channels last.
        return {}

    def check_settings(self, *, precision: str, channels_last_3d: bool, use_gpu: bool) -> None:
        if precision != "fp32" or channels_last_3d:
            raise ConfigError(
                "train.torch.precision and channels_last_3d apply to backend torch only; "
                f"backend tensorflow trains in fp32 (got precision {precision}, "
                f"channels_last_3d {channels_last_3d})"
            )

    def train_loop_per_worker(self) -> Callable[[dict], None]:
        from distmis.backends.tensorflow.loop import train_loop_per_worker

        return train_loop_per_worker

    def train_grid_per_worker(self) -> Callable[[dict], None]:
        from distmis.backends.tensorflow.loop import train_grid_per_worker

        return train_grid_per_worker

    def trial_steps(self) -> Callable[..., Any]:
        from distmis.backends.tensorflow.loop import KerasTrialSteps

        return KerasTrialSteps

    def ray_trainer(
        self,
        train_loop_config: dict,
        *,
        scaling_config: Any,
        run_config: Any,
        use_gpu: bool,
        whole_grid: bool = False,
    ) -> Any:
        from ray.train.tensorflow import TensorflowTrainer

        return TensorflowTrainer(
            self.train_grid_per_worker() if whole_grid else self.train_loop_per_worker(),
            train_loop_config=train_loop_config,
            scaling_config=scaling_config,
            run_config=run_config,
        )

    def predictor(self, model_file: Path) -> Predictor:
        from distmis.backends.tensorflow.predict import keras_predictor

        return keras_predictor(model_file)

    def read_records(self, info: DatasetInfo, split: str) -> Iterator[Record]:
        from distmis.backends.tensorflow.dataset import iter_records

        return iter_records(info, split)

    def device_report(self, *, check_nccl: bool) -> dict[str, Any]:
        from distmis.backends.tensorflow.devices import report

        return report(check_nccl=check_nccl)

    def device_problems(
        self, facts: Mapping[str, Any], *, expected_gpus: int, driver: str | None
    ) -> list[str]:
        from distmis.backends.tensorflow.devices import problems

        return problems(dict(facts), expected_gpus=expected_gpus, driver=driver)

    def versions(self) -> dict[str, str]:
        import tensorflow as tf
        import tf_keras

        return {"tensorflow": tf.__version__, "keras": f"tf_keras {tf_keras.__version__}"}


BACKEND = TensorflowBackend()
