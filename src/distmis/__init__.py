"""DistMIS: distributed hyperparameter tuning of a 3D U-Net on BraTS, measured honestly."""

from __future__ import annotations

__version__ = "0.1.0"
