"""The 3D U-Net (:mod:`distmis.model.unet`) and its loss and metrics (:mod:`distmis.model.losses`).

Keras version
-------------
The project uses ``tf_keras`` (the legacy Keras 2 package, tf-keras 2.21), imported as
``import tf_keras as keras``, never Keras 3. Keras 3's ``model.fit`` under
``MultiWorkerMirroredStrategy`` inside Ray Train's ``TensorflowTrainer`` failed here with
"Attempt to convert a value (PerReplica...) to a Tensor", while tf_keras trained with two
workers.

Importing this package sets ``TF_USE_LEGACY_KERAS=1``. TensorFlow reads that variable when
it is first imported (it decides where ``tensorflow.keras.*`` imports resolve) and again when
``tf.keras`` is first touched, so third-party code that says ``tf.keras`` -- such as Ray's
Keras callbacks -- gets the same tf_keras classes as our model. It only fully works when set
before anything imports tensorflow, so import ``distmis.model`` (or ``distmis.train``, which
imports it) first, and pass :data:`LEGACY_KERAS_ENV` to Ray's ``runtime_env`` so that worker
processes get it before their first import as well.

The package itself imports neither tensorflow nor keras, so importing it is cheap.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}


def _use_legacy_keras() -> None:
    already = os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
    os.environ.update(LEGACY_KERAS_ENV)
    if "tensorflow" in sys.modules and not already:
        # Too late for `from tensorflow.keras... import` paths, which TensorFlow fixed at its
        # own import; `tf.keras` attribute access and our `tf_keras` imports still work.
        log.warning(
            "tensorflow was imported before distmis.model set TF_USE_LEGACY_KERAS=1; "
            "`from tensorflow.keras import ...` may still resolve to Keras 3"
        )


_use_legacy_keras()
