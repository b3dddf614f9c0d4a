"""The two backends train alike: the same U-Net, from the same weights, on the same batches.

Keras' initial weights are copied into the torch U-Net (as the forward-parity test in
``tests/backends/torch/test_unet.py`` does), then each backend takes :data:`STEPS` Adam steps
in float32 on the CPU with the code every trial trains with: Keras' :func:`compiled_unet`
(``train_on_batch`` runs the ``train_function`` that ``fit`` runs) and torch's
:func:`build_training_step`, :func:`train_batches` and :func:`validate_batches`. Then the loss
curves, the BatchNorm running statistics and the validation metrics must agree.

Why the tolerances are not float32 epsilon. The gradients of the first step agree to ~3e-6
relative (the frameworks' convolution kernels sum in other orders), and Adam amplifies such
noise: a weight whose gradient is near zero, or whose momentum nearly cancels, moves by about
``lr`` whatever the noise's sign. Measured on this setup (lr 0.001, 16³, depth 3, 24 steps):
torch against torch with its initial weights scaled by ``1 + 1e-6·N(0, 1)`` differs by up to
2.7e-4 in loss and 12 % in a bottleneck channel's running variance, the size of Keras against
torch (1.7e-4 and 12 %). Hence the loss curve tightly for the first :data:`EARLY_STEPS` and
within :data:`LOSS_TOLERANCE` after; running statistics per channel after EARLY_STEPS
(:data:`STATS_RTOL`) and per layer at the end (:data:`END_STATS_RTOL`). The test caught
torch's own Adam epsilon placement before it was fixed (:class:`KerasAdam`); a BatchNorm
momentum or variance bias of its own would fail the early statistics, and the Adam and
BatchNorm rules are also checked on their own, exactly, below.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

# The backend's loop first: its package sets TF_USE_LEGACY_KERAS before TensorFlow loads.
from distmis.backends.tensorflow.loop import compiled_unet
from distmis.backends.tensorflow.unet import BATCH_NORM_MOMENTUM
from distmis.backends.torch.loop import (
    ADAM_BETA_1,
    ADAM_EPSILON,
    EpochSums,
    adam,
    build_training_step,
    train_batches,
    validate_batches,
)
from distmis.backends.torch.unet import NORM_EPSILON
from tests.backends.torch.test_unet import _port_keras_weights

if TYPE_CHECKING:
    import tf_keras as keras

SPATIAL = (16, 16, 16)
IN_CHANNELS = 4
LABELS = ("WT", "TC", "ET")  # regions: nested channels, as `--labels regions` stores them
DEPTH, BASE_FILTERS = 3, 8
LR, BETA_2, SEED = 1e-3, 0.999, 0
BATCH = 2
STEPS = 24
EARLY_STEPS = 3
# The whole curve (module docstring): measured up to 1.7e-4 between the backends and 2.7e-4
# between two torch runs whose initial weights differ by 1e-6 (GroupNorm; 1.5e-4 BatchNorm).
LOSS_TOLERANCE = 5e-4
# The first EARLY_STEPS, before that noise grows: measured up to 2.7e-6 (GroupNorm, step 3);
# torch's own Adam epsilon placement was 2.8e-5 (BatchNorm) and 4.1e-5 (GroupNorm) off.
EARLY_LOSS_TOLERANCE = 1e-5
# BatchNorm running statistics after EARLY_STEPS, per channel: measured 1.3e-6. A running
# variance of the other bias (16 values per channel in the bottleneck: 6.7 %) or another
# momentum would be off by percents, torch's own Adam was 7e-2 off.
STATS_RTOL = 1e-4
# ... and after STEPS, per layer averaged over its channels: measured 4.8e-3 (single channels
# differ by up to 12 %, as between two torch runs 1e-6 apart); torch's own Adam was 9e-2 off.
END_STATS_RTOL = 0.05
# Validation metrics of each backend's own trained weights: thresholded voxels near 0.5 may
# flip between the two (measured up to 3.8e-3 Dice); the same weights must score the same
# (measured 1.2e-7).
METRIC_TOLERANCE = 0.01
SAME_WEIGHTS_TOLERANCE = 1e-5
# Keras' bias correction uses beta_2 rounded to float32 (0.99900001), so 1 - beta_2 is 1.3e-5
# and its first step 6.6e-6 shorter, relatively, than the exact formula torch follows.
KERAS_BETA_2_ROUNDING = 1e-5


def _cases(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images ``(N, X, Y, Z, C)`` and nested region labels ``(N, X, Y, Z, 3)``."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, *SPATIAL, IN_CHANNELS)).astype(np.float32)
    signal = images[..., 0] + 0.5 * images[..., 1]
    labels = np.stack([signal > 0.3, signal > 0.9, signal > 1.5], axis=-1)
    return images, labels.astype(np.float32)


def _channels_first(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 1)))


def _batch_ranges(volumes: int, steps: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``steps`` batches of BATCH cycling through ``volumes`` in order."""
    per_pass = -(-volumes // BATCH)
    starts = [BATCH * (i % per_pass) for i in range(steps)]
    return [(start, min(start + BATCH, volumes)) for start in starts]


@dataclass
class Trained:
    """What one backend's run left: per-step losses, BatchNorm statistics (name → (mean,
    variance), channels last) after EARLY_STEPS and at the end, validation metrics."""

    losses: np.ndarray
    early_stats: dict[str, tuple[np.ndarray, np.ndarray]]
    end_stats: dict[str, tuple[np.ndarray, np.ndarray]]
    val: dict[str, float]


def _block_names(depth: int) -> list[str]:
    """The conv blocks in torch's module order (encoders, bottleneck, decoders deepest first)."""
    return (
        [f"enc{i}" for i in range(depth)]
        + ["bottleneck"]
        + [f"dec{i}" for i in reversed(range(depth))]
    )


def _keras_stats(model: keras.Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stats = {}
    for block in _block_names(DEPTH):
        for i in range(2):
            weights = model.get_layer(f"{block}_norm{i}").get_weights()
            if len(weights) == 4:
                stats[f"{block}_norm{i}"] = (weights[2], weights[3])
    return stats


def _torch_stats(model: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    if not norms:  # GroupNorm keeps no running statistics
        return {}
    names = [f"{block}_norm{i}" for block in _block_names(DEPTH) for i in range(2)]
    return {
        name: (norm.running_mean.numpy().copy(), norm.running_var.numpy().copy())
        for name, norm in zip(names, norms, strict=True)
    }


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread for torch (the CI machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["batch", "group"])
def twins(request):
    """Train both backends from the same weights; ``(norm, keras_model, torch_step, keras
    Trained, torch Trained, validation arrays)``."""
    norm = request.param
    images, labels = _cases(4, seed=0)
    val_images, val_labels = _cases(3, seed=1)  # 3 volumes: a short last batch
    ranges = _batch_ranges(len(images), STEPS)
    keras_model = compiled_unet(
        (*SPATIAL, IN_CHANNELS),
        LABELS,
        depth=DEPTH,
        base_filters=BASE_FILTERS,
        norm=norm,
        lr=LR,
        beta_2=BETA_2,
        amsgrad=False,
        seed=SEED,
    )
    architecture = {
        "in_channels": IN_CHANNELS,
        "out_channels": len(LABELS),
        "depth": DEPTH,
        "base_filters": BASE_FILTERS,
        "norm": norm,
    }
    with _one_thread():
        step = build_training_step(
            architecture, torch.device("cpu"), seed=SEED, lr=LR, beta_2=BETA_2, amsgrad=False
        )
        _port_keras_weights(keras_model, step.model, DEPTH)

        keras_losses, keras_early = [], {}
        for number, (start, stop) in enumerate(ranges, start=1):
            scores = keras_model.train_on_batch(
                images[start:stop], labels[start:stop], return_dict=True
            )
            keras_losses.append(scores["loss"])
            if number == EARLY_STEPS:
                keras_early = _keras_stats(keras_model)
        keras_val = keras_model.evaluate(
            val_images, val_labels, batch_size=BATCH, return_dict=True, verbose=0
        )

        torch_images, torch_labels = _channels_first(images), _channels_first(labels)
        torch_losses, torch_early = [], {}

        def record(number: int, loss: float) -> None:
            torch_losses.append(loss)
            if number == EARLY_STEPS:
                torch_early.update(_torch_stats(step.model))

        batches = [(torch_images[a:b], torch_labels[a:b]) for a, b in ranges]
        train_batches(step, batches, len(LABELS), log_every=record)
        torch_val = _torch_val(step, val_images, val_labels)
    keras_run = Trained(np.array(keras_losses), keras_early, _keras_stats(keras_model), keras_val)
    torch_run = Trained(np.array(torch_losses), torch_early, _torch_stats(step.model), torch_val)
    return norm, keras_model, step, keras_run, torch_run, (val_images, val_labels)


def _torch_val(step, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Torch's validation pass over ``images`` in batches of BATCH, named as Keras names it."""
    torch_images, torch_labels = _channels_first(images), _channels_first(labels)
    batches = [
        (torch_images[i : i + BATCH], torch_labels[i : i + BATCH])
        for i in range(0, len(images), BATCH)
    ]
    sums: EpochSums = validate_batches(step, batches, len(LABELS))
    metrics = sums.metrics(list(LABELS), "", torch.device("cpu"), distributed=False)
    return metrics


def test_loss_curves_agree(twins):
    _, _, _, keras_run, torch_run, _ = twins
    assert len(keras_run.losses) == len(torch_run.losses) == STEPS
    # The curve must move, or agreeing would prove nothing.
    assert keras_run.losses[-1] < keras_run.losses[0] - 0.05
    np.testing.assert_allclose(
        torch_run.losses[:EARLY_STEPS], keras_run.losses[:EARLY_STEPS], atol=EARLY_LOSS_TOLERANCE
    )
    np.testing.assert_allclose(torch_run.losses, keras_run.losses, rtol=0, atol=LOSS_TOLERANCE)


def test_batchnorm_running_statistics_agree(twins):
    norm, _, _, keras_run, torch_run, _ = twins
    if norm != "batch":
        assert not keras_run.end_stats and not torch_run.end_stats
        return
    assert keras_run.early_stats.keys() == torch_run.early_stats.keys()
    assert len(keras_run.early_stats) == 2 * (2 * DEPTH + 1)
    for name, (mean, variance) in keras_run.early_stats.items():
        torch_mean, torch_variance = torch_run.early_stats[name]
        # The means start at 0: compare them on the scale of the channel's spread.
        np.testing.assert_allclose(
            torch_mean, mean, rtol=0, atol=STATS_RTOL * float(np.sqrt(variance).max()), err_msg=name
        )
        np.testing.assert_allclose(torch_variance, variance, rtol=STATS_RTOL, err_msg=name)
    for name, (mean, variance) in keras_run.end_stats.items():
        torch_mean, torch_variance = torch_run.end_stats[name]
        spread = float(np.sqrt(variance).mean())
        assert abs(float(torch_mean.mean() - mean.mean())) <= END_STATS_RTOL * spread, name
        assert float(torch_variance.mean()) == pytest.approx(
            float(variance.mean()), rel=END_STATS_RTOL
        ), name


def test_validation_metrics_agree(twins):
    _, _, _, keras_run, torch_run, _ = twins
    assert keras_run.val.keys() == torch_run.val.keys()
    for name, value in keras_run.val.items():
        assert torch_run.val[name] == pytest.approx(value, abs=METRIC_TOLERANCE), name


def test_validation_pass_scores_the_same_weights_as_keras_evaluate(twins):
    """Keras' trained weights (BatchNorm statistics included) copied into torch: eval mode,
    the running statistics and the per-sample averaging over a short last batch all agree."""
    _, keras_model, step, keras_run, _, (val_images, val_labels) = twins
    with _one_thread(), torch.no_grad():
        _port_keras_weights(keras_model, step.model, DEPTH)
    step.model.train()
    torch_val = _torch_val(step, val_images, val_labels)
    assert step.model.training  # the validation pass gave the mode back
    for name, value in keras_run.val.items():
        assert torch_val[name] == pytest.approx(value, abs=SAME_WEIGHTS_TOLERANCE), name


def test_normalisation_layers_are_configured_alike(twins):
    norm, keras_model, step, *_ = twins
    keras_norms = [
        keras_model.get_layer(f"{block}_norm{i}") for block in _block_names(DEPTH) for i in (0, 1)
    ]
    torch_norms = [
        m for m in step.model.modules() if isinstance(m, torch.nn.BatchNorm3d | torch.nn.GroupNorm)
    ]
    assert len(keras_norms) == len(torch_norms)
    for keras_norm, torch_norm in zip(keras_norms, torch_norms, strict=True):
        assert torch_norm.eps == pytest.approx(keras_norm.epsilon) == NORM_EPSILON
        if norm == "batch":
            assert torch_norm.momentum == pytest.approx(1 - keras_norm.momentum)
            assert keras_norm.momentum == BATCH_NORM_MOMENTUM
            # Fused: TensorFlow's kernel then keeps the unbiased variance, as torch does.
            assert keras_norm.fused
        else:
            assert torch_norm.num_groups == keras_norm.groups


def test_one_batchnorm_update_keeps_the_same_running_statistics():
    """Both keep the *unbiased* batch variance (n/(n-1)) in their running variance: TensorFlow's
    fused kernel, which Keras uses for 5D channels-last input, as torch does."""
    from distmis.backends.tensorflow.unet import _norm_layer
    from distmis.backends.torch.unet import _norm

    x = np.random.default_rng(0).normal(1.0, 2.0, size=(2, 2, 2, 2, 3)).astype(np.float32)
    keras_norm = _norm_layer("batch", 3, "bn")
    keras_norm(x, training=True)
    torch_norm = _norm("batch", 3).train()
    torch_norm(_channels_first(x))
    n = x.size // 3
    unbiased = x.reshape(-1, 3).var(axis=0, ddof=1)
    expected = BATCH_NORM_MOMENTUM + (1 - BATCH_NORM_MOMENTUM) * unbiased
    assert n == 16
    np.testing.assert_allclose(keras_norm.moving_variance.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(torch_norm.running_var.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_takes_the_steps_of_the_compiled_keras_optimizer(twins, amsgrad):
    """Keras adds epsilon to the uncorrected sqrt(v): step 1 with gradient g moves a weight by
    lr·g/(|g| + ε/sqrt(1-β₂)); torch's own Adam would move it lr·g/(|g| + ε), 3.2x as far
    for g = 1e-6."""
    _, keras_model, *_ = twins
    import tensorflow as tf
    import tf_keras as keras

    config = {**keras_model.optimizer.get_config(), "amsgrad": amsgrad}
    keras_optimizer = keras.optimizers.Adam.from_config(config)
    keras_weight = tf.Variable([0.0], dtype=tf.float64)
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = adam(holder, LR, BETA_2, amsgrad)
    assert optimizer.defaults["eps"] == ADAM_EPSILON == config["epsilon"]
    assert optimizer.defaults["betas"] == (ADAM_BETA_1, BETA_2)
    assert (config["beta_1"], config["beta_2"]) == (ADAM_BETA_1, BETA_2)
    gradients = [1e-6, 5e-7, -2e-6, 1e-3, 1e-8]
    for number, gradient in enumerate(gradients, start=1):
        holder.weight.grad = torch.full_like(holder.weight, gradient)
        optimizer.step()
        keras_optimizer.apply_gradients([(tf.constant([gradient], tf.float64), keras_weight)])
        np.testing.assert_allclose(
            holder.weight.detach().numpy(), keras_weight.numpy(), rtol=KERAS_BETA_2_ROUNDING
        )
        if number == 1:
            expected = -LR * gradient / (gradient + ADAM_EPSILON / np.sqrt(1 - BETA_2))
            assert float(holder.weight.detach()) == pytest.approx(expected, rel=1e-12)
            assert expected == pytest.approx(-0.2403 * LR, rel=1e-3)
