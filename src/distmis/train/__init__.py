"""Training stage: tf.data input pipelines and (distributed) training of the 3D U-Net."""

from __future__ import annotations

# Sets TF_USE_LEGACY_KERAS=1 before any training module imports tensorflow (see that package).
import distmis.model  # noqa: F401
