"""The 3D U-Net of the original DistMIS study, channels-last, with deterministic initial weights.

Layout for ``depth=3, base_filters=8`` (filters per level)::

    input (B, X, Y, Z, C)
    enc0  2×[Conv3D 3³ → norm → ReLU]   8 ─────────────────────────── concat → dec0   8
      MaxPool 2                                                    Conv3DTranspose ↑
    enc1  2×[...]                      16 ───────────────── concat → dec1  16
      MaxPool 2                                          Conv3DTranspose ↑
    enc2  2×[...]                      32 ─────── concat → dec2  32
      MaxPool 2                                Conv3DTranspose ↑
    bottleneck 2×[...]                 64 ─────────────┘
    head  Conv3D 1³ + sigmoid → (B, X, Y, Z, K), one channel per label channel

As in the original (``model_unet_tune``), the transposed convolutions have a 3³ kernel and
stride 2, and each decoder level has the filters of the encoder level it joins.

Keras: this module uses ``tf_keras`` (legacy Keras 2), not Keras 3, because Keras 3's
``model.fit`` under ``MultiWorkerMirroredStrategy`` inside Ray Train's ``TensorflowTrainer``
failed with "Attempt to convert a value (PerReplica...) to a Tensor", while tf_keras trained
with two workers. The package ``distmis.model`` sets ``TF_USE_LEGACY_KERAS=1`` before this
module (and so tensorflow) is imported; see its docstring.
"""

from __future__ import annotations

import logging
from math import gcd

import numpy as np
import tf_keras as keras

log = logging.getLogger(__name__)

NORMS = ("batch", "group")
KERNEL = 3
# Max groups for GroupNormalization; the largest divisor of the filters up to this is used.
MAX_GROUPS = 8
# Lower than Keras' 0.99 (as the original DistMIS used): with few, small batches per epoch
# the moving statistics must catch up within an epoch or validation sees stale ones.
BATCH_NORM_MOMENTUM = 0.9


class _Seeds:
    """Hands out a distinct, reproducible initializer seed per layer.

    Each seed depends only on the model seed and the layer's position in the build order,
    so the same config gives identical weights whatever else was built before in the process
    (Keras' global RNG and layer-name counters play no part).
    """

    def __init__(self, seed: int) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._seed = int(seed)
        self._taken = 0

    def _next(self) -> int:
        state = np.random.SeedSequence([self._seed, self._taken]).generate_state(1)[0]
        self._taken += 1
        return int(state)

    def he_normal(self) -> keras.initializers.Initializer:
        return keras.initializers.HeNormal(seed=self._next())

    def glorot_uniform(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=self._next())


def _groups(filters: int) -> int:
    return gcd(filters, MAX_GROUPS)


def _norm_layer(norm: str, filters: int, name: str) -> keras.layers.Layer:
    if norm == "batch":
        return keras.layers.BatchNormalization(axis=-1, momentum=BATCH_NORM_MOMENTUM, name=name)
    return keras.layers.GroupNormalization(groups=_groups(filters), axis=-1, name=name)


def _conv_block(x, filters: int, norm: str, seeds: _Seeds, name: str):
    """Two [Conv3D 3³ → norm → ReLU]; ``(B, X, Y, Z, ·)`` → ``(B, X, Y, Z, filters)``."""
    for i in range(2):
        # No bias: the normalisation's own shift (beta) would make it redundant.
        x = keras.layers.Conv3D(
            filters,
            KERNEL,
            padding="same",
            use_bias=False,
            kernel_initializer=seeds.he_normal(),
            name=f"{name}_conv{i}",
        )(x)
        x = _norm_layer(norm, filters, f"{name}_norm{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _up(x, filters: int, seeds: _Seeds, name: str):
    """Conv3DTranspose stride 2: ``(B, X, Y, Z, ·)`` → ``(B, 2X, 2Y, 2Z, filters)``."""
    return keras.layers.Conv3DTranspose(
        filters,
        KERNEL,
        strides=2,
        padding="same",
        kernel_initializer=seeds.he_normal(),
        bias_initializer="zeros",
        name=name,
    )(x)


def _validate(input_shape: tuple[int, int, int, int], out_channels: int, depth: int, norm: str):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if out_channels < 1:
        raise ValueError(f"out_channels must be >= 1, got {out_channels}")
    if len(input_shape) != 4 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be (X, Y, Z, C) positive sizes, got {input_shape}")
    factor = 2**depth
    if any(int(s) % factor for s in input_shape[:3]):
        raise ValueError(
            f"spatial dims of input_shape {tuple(input_shape)} must be divisible by "
            f"2**depth = {factor} (depth {depth}), so pooling and upsampling line up"
        )


def build_unet(
    input_shape: tuple[int, int, int, int],
    out_channels: int,
    depth: int = 3,
    base_filters: int = 8,
    norm: str = "batch",
    seed: int = 0,
) -> keras.Model:
    """Build the 3D U-Net: ``(B, X, Y, Z, C)`` → sigmoid probabilities ``(B, X, Y, Z, K)``.

    ``input_shape`` is ``(X, Y, Z, C)`` (no batch axis), ``out_channels`` is ``K``, one per
    label channel. Level ``i`` has ``base_filters * 2**i`` filters; the bottleneck has
    ``base_filters * 2**depth``. ``norm`` is ``"batch"`` or ``"group"``. The initial weights
    depend only on the arguments (``seed`` included).

    Raises ValueError for an unknown ``norm`` or spatial dims not divisible by ``2**depth``.
    """
    _validate(input_shape, out_channels, depth, norm)
    seeds = _Seeds(seed)
    inputs = keras.Input(shape=tuple(int(s) for s in input_shape), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, norm, seeds, f"enc{level}")
        skips.append(x)
        x = keras.layers.MaxPool3D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, norm, seeds, "bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = _up(x, filters, seeds, f"dec{level}_up")
        x = keras.layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, norm, seeds, f"dec{level}")
    outputs = keras.layers.Conv3D(
        out_channels,
        1,
        activation="sigmoid",
        kernel_initializer=seeds.glorot_uniform(),
        bias_initializer="zeros",
        name="head",
    )(x)
    model = keras.Model(inputs, outputs, name=f"unet3d_d{depth}_f{base_filters}_{norm}")
    log.debug("built %s with %d parameters", model.name, count_parameters(model))
    return model


def count_parameters(model: keras.Model) -> int:
    """All weights, trainable or not (BatchNorm moving statistics included)."""
    return int(sum(np.prod(w.shape) for w in model.weights))
