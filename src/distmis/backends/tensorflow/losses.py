"""Soft Dice loss, thresholded Dice metrics and the compile step of the U-Net.

Shapes: ``y_true`` and ``y_pred`` are ``(B, X, Y, Z, K)``, ``y_true`` 0/1 per label channel,
``y_pred`` sigmoid probabilities. Dice is computed per sample and per channel over the spatial
axes, then averaged, so a small tumour counts as much as a large one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

log = logging.getLogger(__name__)

SPATIAL_AXES = (1, 2, 3)
THRESHOLD = 0.5


def soft_dice_per_sample(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """``1 - mean over channels`` of the soft Dice of each sample: ``(B, X, Y, Z, K)`` → ``(B,)``.

    Soft Dice per sample and channel is ``(2·Σ t·p + smooth) / (Σ t + Σ p + smooth)``.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    intersection = tf.reduce_sum(y_true * y_pred, axis=SPATIAL_AXES)  # (B, K)
    total = tf.reduce_sum(y_true, axis=SPATIAL_AXES) + tf.reduce_sum(y_pred, axis=SPATIAL_AXES)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - tf.reduce_mean(dice, axis=-1)


def soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Scalar: ``1 -`` the soft Dice averaged over batch and channels."""
    return tf.reduce_mean(soft_dice_per_sample(y_true, y_pred, smooth))


class SoftDiceLoss(keras.losses.Loss):
    """:func:`soft_dice_loss` as a Keras loss.

    It returns the per-sample values and lets Keras reduce them, so sample weights and the
    per-replica scaling of ``tf.distribute`` strategies apply as for any built-in loss.
    """

    def __init__(self, smooth: float = 1.0, name: str = "soft_dice_loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return soft_dice_per_sample(y_true, y_pred, self.smooth)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


def dice_coefficient(
    y_true: tf.Tensor, y_pred: tf.Tensor, threshold: float = THRESHOLD
) -> tf.Tensor:
    """Hard Dice of ``y_pred > threshold`` per sample and channel: ``(B, X, Y, Z, K)`` → ``(B, K)``.

    A channel empty in both truth and prediction scores 1 (nothing to find, nothing found).
    """
    truth = tf.cast(y_true > 0.5, tf.float32)
    pred = tf.cast(y_pred > threshold, tf.float32)
    intersection = tf.reduce_sum(truth * pred, axis=SPATIAL_AXES)
    total = tf.reduce_sum(truth, axis=SPATIAL_AXES) + tf.reduce_sum(pred, axis=SPATIAL_AXES)
    return tf.where(total > 0, 2.0 * intersection / tf.maximum(total, 1.0), 1.0)


def _dice_of(y_true: tf.Tensor, y_pred: tf.Tensor, channel: int | None) -> tf.Tensor:
    """``(B,)``: the Dice of one channel, or the mean over channels when ``channel`` is None."""
    dice = dice_coefficient(y_true, y_pred)
    return tf.reduce_mean(dice, axis=-1) if channel is None else dice[:, channel]


class DiceMetric(keras.metrics.MeanMetricWrapper):
    """Thresholded Dice of one output channel (or their mean), averaged over every sample seen.

    The per-sample values are accumulated, so the epoch value is the mean over samples,
    independent of how samples were batched or split across replicas.
    """

    def __init__(self, channel: int | None = None, name: str = "dice", **kwargs) -> None:
        super().__init__(_dice_of, name=name, channel=channel, **kwargs)
        self.channel = channel

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "channel": self.channel}

    @classmethod
    def from_config(cls, config: dict) -> DiceMetric:
        return cls(**config)


def dice_metrics(label_channels: Sequence[str]) -> list[DiceMetric]:
    """``dice_<name>`` per label channel (e.g. ``dice_WT``) plus ``dice``, their mean."""
    if not label_channels:
        raise ValueError("label_channels must name at least one channel")
    per_channel = [DiceMetric(i, name=f"dice_{name}") for i, name in enumerate(label_channels)]
    return [*per_channel, DiceMetric(None, name="dice")]


def compile_unet(
    model: keras.Model,
    lr: float,
    beta_2: float,
    amsgrad: bool,
    label_channels: Sequence[str],
) -> keras.Model:
    """Compile ``model`` in place with Adam, :class:`SoftDiceLoss` and :func:`dice_metrics`.

    Call inside ``strategy.scope()`` when training distributed, as for the model itself,
    so the optimizer's variables are mirrored. Returns ``model`` for chaining.
    """
    out_channels = model.output_shape[-1]
    if out_channels != len(label_channels):
        raise ValueError(
            f"model has {out_channels} output channels but label_channels names "
            f"{len(label_channels)}: {list(label_channels)}"
        )
    optimizer = keras.optimizers.Adam(learning_rate=lr, beta_2=beta_2, amsgrad=amsgrad)
    model.compile(optimizer=optimizer, loss=SoftDiceLoss(), metrics=dice_metrics(label_channels))
    return model
