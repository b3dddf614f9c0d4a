"""A saved ``.keras`` U-Net as a predictor of one case at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tf_keras as keras

from distmis.backends.base import Predictor


def keras_predictor(model_file: Path) -> Predictor:
    """``image (X, Y, Z, C) float32 → probabilities (X, Y, Z, K)`` with the model in ``model_file``."""
    model = keras.models.load_model(model_file, compile=False)

    def predict(image: np.ndarray) -> np.ndarray:
        return np.asarray(model(image[None], training=False))[0]

    return predict
