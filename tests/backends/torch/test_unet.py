"""The PyTorch U-Net against the Keras one: parameter count, shapes, ported-weight outputs, loss."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch

from distmis.backends.tensorflow.losses import dice_coefficient as keras_dice_coefficient
from distmis.backends.tensorflow.losses import soft_dice_loss as keras_soft_dice_loss
from distmis.backends.tensorflow.unet import build_unet, count_parameters
from distmis.backends.torch.losses import dice_coefficient, soft_dice_loss, soft_dice_per_sample
from distmis.backends.torch.unet import build_unet_torch
from distmis.backends.torch.unet import count_parameters as count_torch_parameters

SPATIAL = (16, 16, 8)
IN_CHANNELS = 4


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_parameter_count_and_output_shape_match_keras(norm, out_channels):
    keras_model = build_unet(
        (*SPATIAL, IN_CHANNELS), out_channels, depth=3, base_filters=8, norm=norm
    )
    torch_model = build_unet_torch(IN_CHANNELS, out_channels, depth=3, base_filters=8, norm=norm)
    assert count_torch_parameters(torch_model) == count_parameters(keras_model)
    x = torch.zeros(2, IN_CHANNELS, *SPATIAL)
    with torch.no_grad():
        y = torch_model.eval()(x)
    assert keras_model.output_shape == (None, *SPATIAL, out_channels)
    assert tuple(y.shape) == (2, out_channels, *SPATIAL)


def test_count_parameters_adds_batchnorm_statistics_only():
    model = build_unet_torch(IN_CHANNELS, 1, norm="batch")
    trainable = sum(p.numel() for p in model.parameters())
    bn_channels = sum(
        m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)
    )
    assert count_torch_parameters(model) == trainable + 2 * bn_channels


def _port_keras_weights(keras_model, torch_model, depth: int) -> None:
    """Copy every Keras weight into the torch model (channels-last kernels → channels-first)."""

    def kernel(name: str) -> torch.Tensor:
        # Conv3D (k, k, k, in, out) → (out, in, k, k, k); Conv3DTranspose (k, k, k, out, in) →
        # ConvTranspose3d (in, out, k, k, k): the same axis permutation.
        return torch.from_numpy(
            np.transpose(keras_model.get_layer(name).get_weights()[0], (4, 3, 0, 1, 2)).copy()
        )

    def block(module, name: str) -> None:
        for i, (conv, norm) in enumerate([(module[0], module[1]), (module[3], module[4])]):
            conv.weight.copy_(kernel(f"{name}_conv{i}"))
            weights = [
                torch.from_numpy(w) for w in keras_model.get_layer(f"{name}_norm{i}").get_weights()
            ]
            norm.weight.copy_(weights[0])
            norm.bias.copy_(weights[1])
            if len(weights) == 4:
                norm.running_mean.copy_(weights[2])
                norm.running_var.copy_(weights[3])

    with torch.no_grad():
        for level, encoder in enumerate(torch_model.encoders):
            block(encoder, f"enc{level}")
        block(torch_model.bottleneck, "bottleneck")
        for j, (up, decoder) in enumerate(zip(torch_model.ups, torch_model.decoders, strict=True)):
            level = depth - 1 - j
            up.conv.weight.copy_(kernel(f"dec{level}_up"))
            up.conv.bias.copy_(
                torch.from_numpy(keras_model.get_layer(f"dec{level}_up").get_weights()[1])
            )
            block(decoder, f"dec{level}")
        torch_model.head.weight.copy_(kernel("head"))
        torch_model.head.bias.copy_(
            torch.from_numpy(keras_model.get_layer("head").get_weights()[1])
        )


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_ported_keras_weights_give_the_keras_output(norm):
    """Same weights → same function: proves layer order, padding, cropping, concat order, eps."""
    depth, out_channels = 2, 3
    keras_model = build_unet(
        (*SPATIAL, IN_CHANNELS), out_channels, depth=depth, base_filters=4, norm=norm, seed=3
    )
    rng = np.random.default_rng(1)
    # Non-trivial BN statistics, γ and β and transposed-conv biases, so each must be ported right.
    for layer in keras_model.layers:
        weights = layer.get_weights()
        if weights and "_norm" in layer.name:
            shifted = [w + rng.uniform(0.1, 0.5, size=w.shape).astype(np.float32) for w in weights]
            layer.set_weights(shifted)
        elif weights and layer.name.endswith("_up"):
            layer.set_weights([weights[0], rng.normal(size=weights[1].shape).astype(np.float32)])
    torch_model = build_unet_torch(
        IN_CHANNELS, out_channels, depth=depth, base_filters=4, norm=norm
    )
    _port_keras_weights(keras_model, torch_model, depth)
    x = rng.normal(size=(2, *SPATIAL, IN_CHANNELS)).astype(np.float32)
    x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    for training in (False, True):
        expected = keras_model(x, training=training).numpy()
        torch_model.train(training)
        with torch.no_grad():
            got = torch_model(x_torch).numpy()
        np.testing.assert_allclose(np.moveaxis(got, 1, -1), expected, atol=2e-5, rtol=1e-4)


def test_upsampling_is_exactly_twice_the_size():
    model = build_unet_torch(2, 1, depth=1, base_filters=2)
    up = model.ups[0]
    x = torch.zeros(1, 4, 3, 5, 7)
    assert tuple(up(x).shape) == (1, 2, 6, 10, 14)


def test_same_seed_same_weights_other_seed_different():
    torch.manual_seed(123)  # the global RNG must play no part
    a = build_unet_torch(IN_CHANNELS, 3, seed=7).state_dict()
    torch.manual_seed(456)
    b = build_unet_torch(IN_CHANNELS, 3, seed=7).state_dict()
    c = build_unet_torch(IN_CHANNELS, 3, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoders.0.0.weight"], c["encoders.0.0.weight"])


def test_initial_conv_weights_follow_truncated_he_normal():
    model = build_unet_torch(IN_CHANNELS, 1, base_filters=16)
    weight = model.bottleneck[3].weight  # 128 → 128 filters, fan_in 27·128
    std = np.sqrt(2.0 / (27 * 128))
    assert float(weight.detach().abs().max()) <= 2 * std / 0.87962566103423978 + 1e-7
    assert abs(float(weight.detach().std()) - std) < 0.02 * std


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="norm must be one of"):
        build_unet_torch(4, 1, norm="layer")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        build_unet_torch(4, 1, depth=0)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8"):
        build_unet_torch(4, 1)(torch.zeros(1, 4, 12, 16, 16))


def test_soft_dice_matches_keras_loss():
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 6, 5, 4, 3)) > 0.6).astype(np.float32)
    y_pred = rng.random((2, 6, 5, 4, 3)).astype(np.float32)
    expected = float(keras_soft_dice_loss(tf.constant(y_true), tf.constant(y_pred)))
    got = soft_dice_loss(
        torch.from_numpy(np.moveaxis(y_true, -1, 1)), torch.from_numpy(np.moveaxis(y_pred, -1, 1))
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_soft_dice_hand_computed():
    # One sample, one channel, 2 voxels: t = (1, 0), p = (0.5, 0.5): (2·0.5 + 1) / (1 + 1 + 1) = 2/3.
    y_true = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    y_pred = torch.tensor([0.5, 0.5]).reshape(1, 1, 2, 1, 1)
    assert float(soft_dice_per_sample(y_true, y_pred)[0]) == pytest.approx(1 - 2 / 3)
    assert float(soft_dice_loss(y_true, y_true)) == pytest.approx(0.0)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_dice_coefficient_matches_keras_including_empty_channels(threshold):
    rng = np.random.default_rng(2)
    shape = (3, 6, 5, 4, 4)  # (B, X, Y, Z, K), channels-last as Keras
    y_true = (rng.random(shape) > 0.7).astype(np.float32)
    y_pred = rng.random(shape).astype(np.float32)
    y_true[0, ..., 1] = 0  # empty truth, some prediction: 0
    y_true[1, ..., 2], y_pred[1, ..., 2] = 0, 0.1  # empty in both: 1
    y_pred[2, ..., 3] = 0  # truth, empty prediction: 0
    expected = keras_dice_coefficient(tf.constant(y_true), tf.constant(y_pred), threshold).numpy()
    got = dice_coefficient(
        torch.from_numpy(np.moveaxis(y_true, -1, 1)),
        torch.from_numpy(np.moveaxis(y_pred, -1, 1)),
        threshold,
    )
    assert tuple(got.shape) == (3, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert expected[0, 1] == 0.0 and expected[1, 2] == 1.0 and expected[2, 3] == 0.0


def test_dice_coefficient_hand_computed():
    # Truth (1, 1, 0, 0), prediction > 0.5 at (1, 0, 1, 0): 2·1 / (2 + 2) = 0.5.
    y_true = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 4, 1, 1)
    y_pred = torch.tensor([0.9, 0.5, 0.7, 0.2]).reshape(1, 1, 4, 1, 1)
    assert dice_coefficient(y_true, y_pred).tolist() == [[0.5]]
    assert dice_coefficient(y_true, y_pred, threshold=0.4).tolist() == [[pytest.approx(0.8)]]
    with pytest.raises(ValueError, match="one shape"):
        dice_coefficient(y_true, y_pred[..., 0])


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_model_learns_a_fixed_batch(norm):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, IN_CHANNELS, *SPATIAL, generator=generator)
    # A learnable target: voxels where channel 0 is bright.
    label = (image[:, :1] > 0.5).float()
    model = build_unet_torch(IN_CHANNELS, 1, norm=norm, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = soft_dice_loss(label, model(image))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
