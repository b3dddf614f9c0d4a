"""The 3D U-Net, its Dice loss and metrics, and that it actually learns on synthetic BraTS."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from distmis.backends.tensorflow.dataset import make_dataset
from distmis.backends.tensorflow.losses import (
    DiceMetric,
    SoftDiceLoss,
    compile_unet,
    dice_coefficient,
    dice_metrics,
    soft_dice_loss,
)
from distmis.backends.tensorflow.unet import build_unet, count_parameters
from distmis.prepare.convert import ConvertParams
from tests.backends.tensorflow.test_dataset import write_tfrecords

INPUT = (16, 16, 16, 4)


def expected_parameters(out_channels: int, norm: str, base: int = 8, depth: int = 3) -> int:
    """The parameter count worked out layer by layer from the architecture."""
    conv = lambda cin, cout: 27 * cin * cout  # noqa: E731  (3³ kernel, no bias)
    per_norm_channel = 4 if norm == "batch" else 2  # BN: γ, β, moving mean/var; GN: γ, β
    total, cin = 0, INPUT[-1]
    filters = [base * 2**i for i in range(depth + 1)]
    for f in filters:  # encoder levels, then the bottleneck
        total += conv(cin, f) + conv(f, f) + 2 * per_norm_channel * f
        cin = f
    for f in reversed(filters[:-1]):  # transposed conv (with bias), then the block on the concat
        total += conv(cin, f) + f
        total += conv(2 * f, f) + conv(f, f) + 2 * per_norm_channel * f
        cin = f
    return total + cin * out_channels + out_channels  # 1³ head with bias


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shape_and_parameter_count(out_channels, norm):
    model = build_unet(INPUT, out_channels, depth=3, base_filters=8, norm=norm)
    assert model.input_shape == (None, *INPUT)
    assert model.output_shape == (None, 16, 16, 16, out_channels)
    assert count_parameters(model) == expected_parameters(out_channels, norm)
    out = model(np.zeros((2, *INPUT), np.float32), training=False).numpy()
    assert out.shape == (2, 16, 16, 16, out_channels) and ((out > 0) & (out < 1)).all()


def test_measured_parameter_counts():
    # Pinned so an accidental architecture change shows up as a number, not only a formula.
    assert count_parameters(build_unet(INPUT, 1, norm="batch")) == 403_233
    assert count_parameters(build_unet(INPUT, 1, norm="group")) == 402_529
    assert count_parameters(build_unet(INPUT, 3, norm="batch")) == 403_251


def test_filters_per_level_and_group_counts():
    model = build_unet(INPUT, 1, norm="group", base_filters=4)
    assert [model.get_layer(f"enc{i}_conv0").filters for i in range(3)] == [4, 8, 16]
    assert model.get_layer("bottleneck_conv0").filters == 32
    assert model.get_layer("enc0_norm0").groups == 4  # min(8, filters) dividing filters
    assert model.get_layer("enc1_norm0").groups == 8
    assert model.get_layer("enc0_conv0").use_bias is False
    batch = build_unet(INPUT, 1, norm="batch")
    assert isinstance(batch.get_layer("dec0_norm1"), keras.layers.BatchNormalization)


def test_same_seed_gives_identical_initial_weights_regardless_of_history():
    first = build_unet(INPUT, 1, seed=7).get_weights()
    build_unet((32, 32, 32, 2), 3, seed=7, norm="group")  # unrelated model in between
    tf.random.uniform((3,))  # and some global RNG use
    again = build_unet(INPUT, 1, seed=7).get_weights()
    other = build_unet(INPUT, 1, seed=8).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    kernels = [i for i, w in enumerate(first) if w.ndim == 5]
    assert all(not np.array_equal(first[i], other[i]) for i in kernels)
    # Layers do not share a seed: no two kernels of the same shape start out equal.
    same_shape = [(i, j) for i in kernels for j in kernels if i < j]
    assert all(
        not np.array_equal(first[i], first[j])
        for i, j in same_shape
        if first[i].shape == first[j].shape
    )


def test_invalid_shape_depth_or_norm_is_rejected():
    with pytest.raises(ValueError, match=r"\(20, 16, 16, 4\).*depth 3"):
        build_unet((20, 16, 16, 4), 1, depth=3)
    assert build_unet((20, 16, 16, 4), 1, depth=2).output_shape == (None, 20, 16, 16, 1)
    with pytest.raises(ValueError, match="norm must be one of"):
        build_unet(INPUT, 1, norm="instance")
    with pytest.raises(ValueError, match="input_shape"):
        build_unet((16, 16, 16), 1)


def volumes(*masks: np.ndarray) -> tf.Tensor:
    """Stack (X, Y, Z, K) arrays into a float32 (B, X, Y, Z, K) batch."""
    return tf.constant(np.stack(masks), tf.float32)


def box(shape=(2, 2, 2), voxels: tuple[slice, ...] = (), channels: int = 1) -> np.ndarray:
    mask = np.zeros((*shape, channels), np.float32)
    if voxels:
        mask[voxels] = 1.0
    return mask


# 2×2×2 volumes; truth covers the x=0 half (4 voxels).
TRUTH = box(voxels=(0,))
SHIFTED = box(voxels=(slice(None), 0))  # the y=0 half: 2 of its 4 voxels lie in TRUTH
DISJOINT = box(voxels=(1,))  # the x=1 half


def test_soft_dice_loss_by_hand():
    assert soft_dice_loss(volumes(TRUTH), volumes(TRUTH)).numpy() == pytest.approx(0.0)
    # Disjoint: (2·0 + 1) / (4 + 4 + 1) = 1/9, loss 8/9.
    assert soft_dice_loss(volumes(TRUTH), volumes(DISJOINT)).numpy() == pytest.approx(8 / 9)
    # Half overlap: (2·2 + 1) / (4 + 4 + 1) = 5/9, loss 4/9.
    assert soft_dice_loss(volumes(TRUTH), volumes(SHIFTED)).numpy() == pytest.approx(4 / 9)
    # Soft prediction 0.5 on the truth voxels: (2·2 + 1) / (4 + 2 + 1) = 5/7.
    half = volumes(0.5 * TRUTH)
    assert soft_dice_loss(volumes(TRUTH), half).numpy() == pytest.approx(2 / 7)
    # Mean over the batch: losses 0 and 4/9.
    batch = soft_dice_loss(volumes(TRUTH, TRUTH), volumes(TRUTH, SHIFTED))
    assert batch.numpy() == pytest.approx(2 / 9)
    # Smooth changes the disjoint case: (0 + 0.5) / (8 + 0.5) → loss 16/17.
    assert soft_dice_loss(volumes(TRUTH), volumes(DISJOINT), smooth=0.5).numpy() == pytest.approx(
        16 / 17
    )


def test_soft_dice_loss_averages_channels_per_sample():
    truth = np.concatenate([TRUTH, TRUTH], axis=-1)
    pred = np.concatenate([TRUTH, SHIFTED], axis=-1)  # channel losses 0 and 4/9
    assert soft_dice_loss(volumes(truth), volumes(pred)).numpy() == pytest.approx(2 / 9)
    keras_loss = SoftDiceLoss()(volumes(truth, truth), volumes(pred, truth))
    assert keras_loss.numpy() == pytest.approx(1 / 9)  # (2/9 + 0) / 2


def test_dice_coefficient_thresholds_at_half():
    truth = np.concatenate([TRUTH, TRUTH, TRUTH, box()], axis=-1)
    pred = np.concatenate([0.9 * TRUTH, 0.7 * SHIFTED, 0.4 * TRUTH, box()], axis=-1)
    dice = dice_coefficient(volumes(truth), volumes(pred)).numpy()
    # perfect, half overlap 2·2/8, all below threshold, empty in both (scores 1).
    np.testing.assert_allclose(dice, [[1.0, 0.5, 0.0, 1.0]])
    assert dice_coefficient(volumes(TRUTH), volumes(DISJOINT)).numpy()[0, 0] == 0.0


def test_dice_metrics_per_channel_and_mean_over_every_sample():
    metrics = dice_metrics(("WT", "TC", "ET"))
    assert [m.name for m in metrics] == ["dice_WT", "dice_TC", "dice_ET", "dice"]
    truth = np.concatenate([TRUTH, TRUTH, TRUTH], axis=-1)
    perfect = truth
    mixed = np.concatenate([SHIFTED, DISJOINT, TRUTH], axis=-1)  # 0.5, 0, 1
    for metric in metrics:
        metric.update_state(volumes(truth), volumes(perfect))  # one sample
        metric.update_state(volumes(truth, truth), volumes(mixed, mixed))  # two samples
    results = [float(m.result()) for m in metrics]
    # Mean over the three samples: WT (1+.5+.5)/3, TC (1+0+0)/3, ET 1, dice their mean.
    np.testing.assert_allclose(results, [2 / 3, 1 / 3, 1.0, 2 / 3], rtol=1e-6)
    assert DiceMetric.from_config(metrics[1].get_config()).channel == 1


def test_compile_unet_sets_adam_loss_and_metrics():
    model = build_unet((4, 4, 4, 4), 3, depth=1, base_filters=2)
    compile_unet(model, lr=2e-3, beta_2=0.99, amsgrad=True, label_channels=("WT", "TC", "ET"))
    config = model.optimizer.get_config()
    assert config["learning_rate"] == pytest.approx(2e-3)
    assert config["beta_2"] == pytest.approx(0.99) and config["amsgrad"] is True
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 4, 4)).astype(np.float32)
    y = (x[..., :3] > 0).astype(np.float32)
    logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "dice_WT", "dice_TC", "dice_ET", "dice"}
    with pytest.raises(ValueError, match="3 output channels"):
        compile_unet(model, 1e-3, 0.999, False, ("tumour",))


@pytest.mark.slow
def test_model_learns_to_segment_synthetic_tumours(tmp_path):
    """9 training cases at 16³, 8 epochs: validation Dice climbs from chance to well above."""
    params = ConvertParams(
        shape=(16, 16, 16), label_mode="binary", split=(0.75, 0.25, 0.0), shards=(2, 1, 1)
    )
    info = write_tfrecords(tmp_path, 12, params)
    model = build_unet(info.image_shape, 1, norm="batch", seed=0)
    compile_unet(model, lr=3e-3, beta_2=0.999, amsgrad=False, label_channels=info.label_channels)
    scope = tmp_path / "cache"
    scope.mkdir()
    train = make_dataset(info, "train", 2, shuffle=True, seed=0, cache=True, cache_scope=scope)
    val = make_dataset(info, "val", 2, shuffle=False, seed=0, cache=True, cache_scope=scope)
    history = model.fit(train, validation_data=val, epochs=8, verbose=0).history
    curve = [round(v, 3) for v in history["val_dice"]]
    print("val dice per epoch:", curve, "train loss:", [round(v, 3) for v in history["loss"]])
    assert history["loss"][-1] < history["loss"][0]
    assert curve[-1] >= curve[0] + 0.2 and curve[-1] >= 0.5, curve


def test_legacy_keras_is_selected():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert isinstance(build_unet(INPUT, 1), keras.Model)
