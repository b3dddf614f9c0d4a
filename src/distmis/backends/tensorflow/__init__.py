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
variable first; :data:`WORKER_ENV` (both variables) is :attr:`TensorflowBackend.worker_env`
(with :data:`CPU_ONLY_ENV` during a CPU-only run), which Ray's ``runtime_env`` passes to worker
processes before their first import as well.

The package itself imports neither tensorflow nor keras, so importing it is cheap.

CPU-only runs
-------------
On a machine or job without a usable GPU, TensorFlow's CUDA probe fails and logs
``E0000 ... cuda_platform.cc:52] failed call to cuInit: ...`` at error level once per
process, green runs included. TensorFlow skips the probe when its device factories are limited
to the CPU (:data:`CPU_ONLY_ENV`, read when the library loads): importing this package sets it
when no CUDA driver library can be loaded (nothing to probe), and
:func:`hide_gpus_if_cpu_only` sets it for the process and its Ray workers while a
``use_gpu: false`` run lasts. ``TF_CPP_MIN_LOG_LEVEL`` is left alone, so real errors still
reach the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distmis.backends.base import Backend, Predictor

if TYPE_CHECKING:
    from distmis.shards.info import DatasetInfo
    from distmis.shards.records import Record

log = logging.getLogger(__name__)

LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}
# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512_VNNI/BF16,
# AVX_VNNI or AMX. Elsewhere a Conv3D's gradients run Conv3DCustomBackprop{Input,Filter}Op,
# which for a batch of one build an im2col buffer of the whole volume (27 x C_in floats per
# voxel): ~30 GB for one 240x240x152 step instead of ~5-6 GB (benchmarks/step_memory.py,
# docs/explanation/input-memory.md "Sizing a node"). A value already set wins.
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

# TensorFlow creates devices of these types only (its TF_ENABLED_DEVICE_TYPES, read once, when
# the library loads): with "CPU" it never loads the CUDA driver nor calls cuInit, whose
# failure is the error-level line of a CPU run (package docstring). CUDA_VISIBLE_DEVICES=""
# and tf.config.set_visible_devices([], "GPU") still let it call cuInit and log the line.
CPU_ONLY_ENV = {"TF_ENABLED_DEVICE_TYPES": "CPU"}
# How many use_gpu: false runs are under way in this process (hide_gpus_if_cpu_only).
_cpu_only_runs = 0


def _cuda_driver_loads() -> bool:
    """Whether the CUDA driver library that TensorFlow would load (libcuda.so.1) loads here."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _cpu_only_without_a_driver() -> None:
    # Without the driver library TensorFlow can use no GPU, and its probe can only fail.
    if any(k in os.environ for k in CPU_ONLY_ENV) or "tensorflow" in sys.modules:
        return
    if not _cuda_driver_loads():
        os.environ.update(CPU_ONLY_ENV)


_cpu_only_without_a_driver()


@contextlib.contextmanager
def hide_gpus_if_cpu_only(use_gpu: bool) -> Iterator[None]:
    """While a run with ``use_gpu`` false lasts, TensorFlow creates CPU devices only: in this
    process (when it imports tensorflow inside the block) and in the Ray workers the run starts
    (:attr:`TensorflowBackend.worker_env`, and the environment a local Ray inherits). So it
    neither probes CUDA (no cuInit error line) nor takes a GPU the run did not ask for. With
    ``use_gpu`` true it does nothing. A value of ``TF_ENABLED_DEVICE_TYPES`` already set wins;
    the environment is restored on the way out, so later processes (a GPU run's preflight)
    see the GPUs again.
    """
    global _cpu_only_runs
    if use_gpu:
        yield
        return
    saved = {k: os.environ.get(k) for k in CPU_ONLY_ENV}
    for name, value in CPU_ONLY_ENV.items():
        os.environ.setdefault(name, value)
    if "tensorflow" in sys.modules:
        log.debug("tensorflow is already loaded: its devices here stay as they are")
    _cpu_only_runs += 1
    try:
        yield
    finally:
        _cpu_only_runs -= 1
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TensorflowBackend(Backend):
    """tf_keras under ``tf.distribute`` (``MultiWorkerMirroredStrategy`` in data mode).

    It takes no options of its own (the base class's ``options`` and ``check_options``): it
    trains in float32, channels last, and ``train.torch``'s switches mean nothing to it.
    """

    name = "tensorflow"
    model_suffix = ".keras"
    loop_module = "distmis.backends.tensorflow.loop"

    @property
    def worker_env(self) -> Mapping[str, str]:  # type: ignore[override]
        """:data:`WORKER_ENV`, plus :data:`CPU_ONLY_ENV` while a CPU-only run lasts."""
        if not _cpu_only_runs:
            return WORKER_ENV
        return {**WORKER_ENV, **{k: os.environ.get(k, v) for k, v in CPU_ONLY_ENV.items()}}

    def run_devices(self, use_gpu: bool) -> contextlib.AbstractContextManager[None]:
        return hide_gpus_if_cpu_only(use_gpu)

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
