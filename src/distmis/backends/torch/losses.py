"""Soft Dice loss and thresholded Dice in PyTorch, as :mod:`distmis.backends.tensorflow.losses`, channels-first.

Shapes: ``y_true`` and ``y_pred`` are ``(B, K, X, Y, Z)``, ``y_true`` 0/1 per label channel,
``y_pred`` sigmoid probabilities. Dice is computed per sample and channel over the spatial
axes, then averaged, so a small tumour counts as much as a large one. Sums are taken in
float32 even under ``torch.autocast`` (a bf16 sum over 10⁷ voxels would lose the small ones).
"""

from __future__ import annotations

import torch

SPATIAL_DIMS = (2, 3, 4)
THRESHOLD = 0.5


def _check_shapes(y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
    if y_true.shape != y_pred.shape or y_pred.ndim != 5:
        raise ValueError(
            f"expected y_true and y_pred of one shape (B, K, X, Y, Z), "
            f"got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )


def soft_dice_per_sample(
    y_true: torch.Tensor, y_pred: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - mean over channels`` of the soft Dice of each sample: ``(B, K, X, Y, Z)`` → ``(B,)``.

    Soft Dice per sample and channel is ``(2·Σ t·p + smooth) / (Σ t + Σ p + smooth)``.
    """
    _check_shapes(y_true, y_pred)
    y_true = y_true.float()
    y_pred = y_pred.float()
    intersection = (y_true * y_pred).sum(dim=SPATIAL_DIMS)  # (B, K)
    total = y_true.sum(dim=SPATIAL_DIMS) + y_pred.sum(dim=SPATIAL_DIMS)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - dice.mean(dim=-1)


def soft_dice_loss(y_true: torch.Tensor, y_pred: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Scalar: ``1 -`` the soft Dice averaged over batch and channels."""
    return soft_dice_per_sample(y_true, y_pred, smooth).mean()


def dice_coefficient(
    y_true: torch.Tensor, y_pred: torch.Tensor, threshold: float = THRESHOLD
) -> torch.Tensor:
    """Hard Dice of ``y_pred > threshold`` per sample and channel: ``(B, K, X, Y, Z)`` → ``(B, K)``.

    As :func:`distmis.backends.tensorflow.losses.dice_coefficient`: truth is ``y_true > 0.5``, and a channel
    empty in both truth and prediction scores 1 (nothing to find, nothing found).
    """
    _check_shapes(y_true, y_pred)
    truth = (y_true > 0.5).float()
    pred = (y_pred > threshold).float()
    intersection = (truth * pred).sum(dim=SPATIAL_DIMS)
    total = truth.sum(dim=SPATIAL_DIMS) + pred.sum(dim=SPATIAL_DIMS)
    dice = 2.0 * intersection / total.clamp(min=1.0)
    return torch.where(total > 0, dice, torch.ones_like(dice))
