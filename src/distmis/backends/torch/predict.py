"""A saved ``.pt`` U-Net (:mod:`.checkpoint`) as a predictor of one case at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distmis import modes
from distmis.backends.base import Predictor
from distmis.backends.torch.checkpoint import load_model

MADE_BY = f"rule {modes.ANY_RULE} (`distmis train`)"


def torch_predictor(model_file: Path) -> Predictor:
    """``image (X, Y, Z, C) float32 → probabilities (X, Y, Z, K)``, on the GPU if there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_file, MADE_BY).to(device)

    def predict(image: np.ndarray) -> np.ndarray:
        # The torch U-Net is channels-first: (X, Y, Z, C) → (1, C, X, Y, Z) and back.
        batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))[None]
        with torch.inference_mode():
            probabilities = model(batch.to(device))[0].float().cpu().numpy()
        return np.moveaxis(probabilities, 0, -1)

    return predict
