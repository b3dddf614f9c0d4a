"""The DistMIS 3D U-Net in PyTorch, layer for layer the Keras model of :mod:`distmis.backends.tensorflow.unet`.

Layout: torch convolutions are channels-first, so the model maps ``(B, C, X, Y, Z)`` to sigmoid
probabilities ``(B, K, X, Y, Z)``. A record's channels-last ``image`` ``(X, Y, Z, C)`` becomes
``(C, X, Y, Z)`` by ``np.moveaxis(image, -1, 0)`` (``tensor.permute(3, 0, 1, 2)``); the spatial
axes keep their order, so voxel ``[x, y, z, c]`` of the record is ``[c, x, y, z]`` here, and the
same for labels ``(X, Y, Z, K)`` → ``(K, X, Y, Z)``. :mod:`distmis.backends.torch.tfrecord`
yields tensors in this layout. (``torch.channels_last_3d`` is only a memory format: the
logical shape stays ``(B, C, X, Y, Z)``.)

What is mirrored from the Keras model, and how:

- conv blocks: two [Conv3d 3³ "same", no bias → norm → ReLU], filters ``base * 2**level``;
- BatchNorm: Keras ``momentum=0.9`` means ``moving = 0.9·moving + 0.1·batch``; torch's
  ``momentum`` is the weight of the batch, so 0.1. ``eps`` is Keras' default 1e-3 for both norms
  (torch's own default is 1e-5). One difference remains: torch updates ``running_var`` with the
  unbiased batch variance, Keras with the biased one (a factor n/(n-1), n = B·X·Y·Z voxels,
  negligible at these sizes); training-mode outputs are identical;
- GroupNorm: ``gcd(filters, 8)`` groups, as :func:`distmis.backends.tensorflow.unet._groups`;
- MaxPool3d 2; ConvTranspose3d 3³ stride 2 with bias; concatenation ``[upsampled, skip]``
  along channels, in that order; head Conv3d 1³ with bias, then sigmoid;
- initial weights: truncated He normal (Keras' ``HeNormal``: std ``sqrt(2/fan_in)/0.8796``, cut
  at ±2 std) for convolutions, Glorot uniform for the head, zero biases, γ=1 and β=0 — the same
  distributions (not the same numbers: the RNGs differ) with Keras' fan-in conventions.

The transposed convolution: Keras' ``Conv3DTranspose(3, strides=2, padding="same")`` maps
``n`` → ``2n`` with its padding all at the end, i.e. ``y[2i + k] += x[i]·w[k]`` for ``k = 0..2``
and the last output voxel (index ``2n``) dropped. torch's ``padding=1, output_padding=1`` gives
``2n`` as well but shifted one voxel (``y[2i + k - 1]``), so ported weights would not give the
Keras output. Here ``padding=0`` (size ``2n + 1``) and the last voxel of each spatial axis is
cropped, which is exactly the Keras computation (tests port Keras weights and compare outputs).
"""

from __future__ import annotations

import math
from math import gcd

import numpy as np
import torch
from torch import nn

NORMS = ("batch", "group")
KERNEL = 3
MAX_GROUPS = 8  # as distmis.backends.tensorflow.unet.MAX_GROUPS
# Keras BatchNormalization(momentum=0.9) weights the old moving value by 0.9; torch's momentum
# is the weight of the new batch statistic.
BATCH_NORM_MOMENTUM = 1.0 - 0.9
NORM_EPSILON = 1e-3  # Keras' default for BatchNormalization and GroupNormalization
# Keras' truncated normal keeps draws within ±2 std and rescales std by this so the variance of
# the truncated draws equals the requested one (keras.initializers.VarianceScaling).
TRUNCATION_STD_FACTOR = 0.87962566103423978


class _Seeds:
    """A distinct, reproducible ``torch.Generator`` per layer, in the Keras model's build order.

    Each generator depends only on the model seed and the layer's position (the same
    ``SeedSequence([seed, position])`` scheme as :class:`distmis.backends.tensorflow.unet._Seeds`), so the
    same config gives identical weights whatever else used torch's global RNG before.
    """

    def __init__(self, seed: int) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._seed = int(seed)
        self._taken = 0

    def next(self) -> torch.Generator:
        state = np.random.SeedSequence([self._seed, self._taken]).generate_state(1)[0]
        self._taken += 1
        return torch.Generator().manual_seed(int(state))


def _he_normal_(weight: torch.Tensor, fan_in: int, generator: torch.Generator) -> None:
    std = math.sqrt(2.0 / fan_in) / TRUNCATION_STD_FACTOR
    with torch.no_grad():
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)


def _glorot_uniform_(
    weight: torch.Tensor, fan_in: int, fan_out: int, generator: torch.Generator
) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-limit, limit, generator=generator)


def _norm(norm: str, filters: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm3d(filters, eps=NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM)
    return nn.GroupNorm(gcd(filters, MAX_GROUPS), filters, eps=NORM_EPSILON)


class ConvBlock(nn.Sequential):
    """Two [Conv3d 3³ → norm → ReLU]: ``(B, ·, X, Y, Z)`` → ``(B, filters, X, Y, Z)``."""

    def __init__(self, in_channels: int, filters: int, norm: str, seeds: _Seeds) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, filters):
            # No bias: the normalisation's own shift (beta) would make it redundant.
            conv = nn.Conv3d(cin, filters, KERNEL, padding="same", bias=False)
            _he_normal_(conv.weight, fan_in=KERNEL**3 * cin, generator=seeds.next())
            layers += [conv, _norm(norm, filters), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UpConv(nn.Module):
    """ConvTranspose3d 3³ stride 2 as Keras' "same": ``(B, ·, X, Y, Z)`` → ``(B, f, 2X, 2Y, 2Z)``.

    See the module docstring for why it pads nothing and crops the last voxel per axis.
    """

    def __init__(self, in_channels: int, filters: int, seeds: _Seeds) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose3d(in_channels, filters, KERNEL, stride=2, padding=0)
        # Keras takes the fan-in of a transposed kernel (k, k, k, out, in) from its
        # second-to-last axis, i.e. the *output* filters.
        _he_normal_(self.conv.weight, fan_in=KERNEL**3 * filters, generator=seeds.next())
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[..., :-1, :-1, :-1]


class UNet3D(nn.Module):
    """The 3D U-Net; build it with :func:`build_unet_torch`."""

    def __init__(
        self, in_channels: int, out_channels: int, depth: int, base_filters: int, norm: str, seed
    ) -> None:
        super().__init__()
        seeds = _Seeds(seed)
        self.depth = depth
        self.encoders = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            filters = base_filters * 2**level
            self.encoders.append(ConvBlock(cin, filters, norm, seeds))
            cin = filters
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = ConvBlock(cin, base_filters * 2**depth, norm, seeds)
        cin = base_filters * 2**depth
        # Held in decoding order (deepest level first), which is also Keras' build order.
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            filters = base_filters * 2**level
            self.ups.append(UpConv(cin, filters, seeds))
            self.decoders.append(ConvBlock(2 * filters, filters, norm, seeds))
            cin = filters
        self.head = nn.Conv3d(cin, out_channels, 1)
        _glorot_uniform_(self.head.weight, cin, out_channels, seeds.next())
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, X, Y, Z)`` → sigmoid probabilities ``(B, K, X, Y, Z)``."""
        factor = 2**self.depth
        if x.ndim != 5 or any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"expected input (B, C, X, Y, Z) with X, Y, Z divisible by 2**depth = {factor}, "
                f"got {tuple(x.shape)}"
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return torch.sigmoid(self.head(x))


def build_unet_torch(
    in_channels: int,
    out_channels: int,
    depth: int = 3,
    base_filters: int = 8,
    norm: str = "batch",
    seed: int = 0,
) -> UNet3D:
    """Build the 3D U-Net: ``(B, C, X, Y, Z)`` → sigmoid probabilities ``(B, K, X, Y, Z)``.

    ``in_channels`` is ``C``, ``out_channels`` is ``K``; ``depth``, ``base_filters``, ``norm``
    (``"batch"`` or ``"group"``) and ``seed`` as for :func:`distmis.backends.tensorflow.unet.build_unet`.
    The initial weights depend only on the arguments. The model is on the CPU in float32.

    Raises ValueError for an unknown ``norm`` or a non-positive size.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("depth", depth),
        ("base_filters", base_filters),
    ):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return UNet3D(int(in_channels), int(out_channels), int(depth), int(base_filters), norm, seed)


def count_parameters(model: nn.Module) -> int:
    """Parameters plus BatchNorm running mean/variance, as Keras' ``count_parameters`` counts.

    Keras counts BatchNorm's moving statistics as (non-trainable) weights; torch keeps them as
    buffers. ``num_batches_tracked`` has no Keras counterpart and is left out.
    """
    params = sum(p.numel() for p in model.parameters())
    stats = sum(
        b.numel()
        for name, b in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    return int(params + stats)
