"""Peak memory of ONE training step of the U-Net on the CPU, tf_keras against torch.

For each ``--backends`` entry, each volume size (``--sizes``, each X Y Z divisible by
2**depth; ``--full`` is the stored BraTS size 240×240×152) and each ``--settings`` entry, a
fresh child process (``python benchmarks/step_memory.py --child ...``) builds the model the
trial builds (``compiled_unet`` / ``build_training_step``: the schema's default architecture,
depth 3, base 8, batch norm, 4 input channels, 1 label channel, Adam lr 1e-3), takes the
resident set size after the build (BASELINE), then runs ``--steps`` steps of batch 1 on random
data and reports the peak RSS of the first step (which includes tf.function tracing, Grappler
and kernel/primitive creation) and of the later ones (``/proc/self/clear_refs`` resets the
high-water mark between steps), read from ``VmHWM`` in ``/proc/self/status``.

Columns: ``peak`` is the highest of the steps' peaks; ``Δ/vox`` is (peak − baseline) per
voxel in bytes. Step memory grows linearly with voxels (every activation and every kernel
workspace is a fixed number of channels per voxel), so the full-size peak is extrapolated
as baseline + Δ/vox × 240·240·152 (``full est``). ``act`` is the sum of every layer's output
(float32, input and head included) per voxel, the activations a backward pass must keep;
``Δ/act`` is the step's extra memory in units of that, ~2–4 for a framework that frees
what it no longer needs, far more when something else (a kernel's workspace) dominates.

TensorFlow settings (``--settings``, joined by ``+`` to combine; each runs in its own child):

  fit            fit_epoch (model.fit), the trial's own step (the default)
  tob            model.train_on_batch (the same train_function, no tf.data)
  tape           a plain tf.GradientTape step in a tf.function
  eager          the same GradientTape step, eagerly (no tf.function, no Grappler)
  onednn0/1      TF_ENABLE_ONEDNN_OPTS=0/1 (oneDNN _Mkl* kernels off/on; on by default on x86)
  nolayout       tf.config.optimizer layout_optimizer off
  noremap        tf.config.optimizer remapping off (Conv+BN+ReLU fusion)
  nograppler     tf.config.optimizer disable_meta_optimizer (no Grappler at all)
  jit            recompile with jit_compile=True (XLA on the CPU)
  avx2           ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's kernels as on a CPU without AVX-512
  interop1       inter_op_parallelism_threads 1 (no two ops at once)
  eigen          the tape step with Conv3DBackprop{Input,Filter}V2 built under kernel label
                 "eigen_tensor" (Eigen's CuboidConvolutionBackward*, not the im2col kernels)

What to look for: without oneDNN (``onednn0``; also TensorFlow's default on a Linux CPU
without AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX) the gradients of every 3×3×3 Conv3D run
in Conv3DCustomBackpropInputOp / Conv3DCustomBackpropFilterOp, which for a batch of one
im2col the whole volume into a temporary of 27 × input channels floats per voxel (108·C_in
bytes; 1728 B/voxel for the 16-channel concat of the top decoder level, 15 GB at full size,
and the two kernels of one layer can run at once on the inter-op pool). ``eigen`` or oneDNN
on bound it at about the activations, as torch does.

torch has one setting, ``default``: the loop's ``TrainingStep``. A child whose RSS passes
``--max-rss-gb`` (default 9) is killed and its row says so: measure at reduced sizes and read
``full est``. ``--full`` needs more than 24 GB for tensorflow with default settings.

    python benchmarks/step_memory.py [--backends tensorflow torch]
        [--sizes 48x48x32 80x80x48 120x120x72] [--full]
        [--settings fit onednn0 tape ...] [--steps 2] [--cpus N] [--max-rss-gb 9]
        [--depth 3] [--base-filters 8] [--norm batch]

A benchmark, not a test: it exits 0 unless something breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from _common import print_machine

from distmis.hparams import HParams

FULL_SIZE = (240, 240, 152)  # the stored BraTS volume (preprocess.shape)
DEFAULT_SIZES = ((48, 48, 32), (80, 80, 48), (120, 120, 72))
IN_CHANNELS, LABEL_CHANNELS = 4, ("WT",)
SEED = 0
BACKENDS = ("tensorflow", "torch")
TF_SETTINGS = {
    "fit": "fit_epoch (model.fit), the trial's step",
    "tob": "model.train_on_batch",
    "tape": "tf.GradientTape step in a tf.function",
    "eager": "tf.GradientTape step, eager",
    "onednn0": "TF_ENABLE_ONEDNN_OPTS=0",
    "onednn1": "TF_ENABLE_ONEDNN_OPTS=1",
    "nolayout": "layout_optimizer off",
    "noremap": "remapping off",
    "nograppler": "disable_meta_optimizer",
    "jit": "jit_compile=True",
    "avx2": "ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN as on a CPU without AVX-512)",
    "interop1": "inter_op_parallelism_threads 1 (one op at a time)",
    "eigen": "tape step with Conv3DBackprop*V2 kernel label eigen_tensor (not the im2col one)",
}
# The CPU kernels TensorFlow registers for a 3D convolution's gradients without oneDNN:
# unlabelled (default) is Conv3DCustomBackprop{Input,Filter}Op, which im2cols the whole volume
# of a batch-1 step; label "eigen_tensor" is Eigen's CuboidConvolutionBackward{Input,Filter}.
EIGEN_KERNELS = {"Conv3DBackpropInputV2": "eigen_tensor", "Conv3DBackpropFilterV2": "eigen_tensor"}
TF_STEPS = ("fit", "tob", "tape", "eager")
TORCH_SETTINGS = {"default": "the loop's TrainingStep"}
MIB = 2**20
RESULT_TAG = "STEP_MEMORY_RESULT "


@dataclass(frozen=True)
class Architecture:
    depth: int = 3
    base_filters: int = 8
    norm: str = "batch"

    def hparams(self) -> HParams:
        """The configuration trained: ``norm`` given, the others the grid's defaults."""
        return HParams(norm=self.norm)


# ---------------------------------------------------------------- memory of this process


def _proc_kib(path: str, field: str) -> int:
    """A ``field: N kB`` line of a /proc file, in KiB; 0 when unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _status_kib(field: str, pid: str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM); 0 when unreadable."""
    return _proc_kib(f"/proc/{pid}/status", field)


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ---------------------------------------------------------------- what the model holds


def activation_floats_per_voxel(arch: Architecture, in_channels: int, out_channels: int) -> float:
    """Every layer's output of the U-Net (as ``build_unet`` lays it out: per conv block
    conv/norm/ReLU twice; pool; transposed conv; concat; head; the input) in floats per
    input voxel: ``activation bytes = 4 × this × voxels``."""
    total = in_channels + out_channels
    for level in range(arch.depth):
        filters, scale = arch.base_filters * 2**level, 8.0**-level
        encoder = 6 * filters + filters / 8  # the block, then its pooled output
        decoder = filters + 2 * filters + 6 * filters  # up, concat, block
        total += (encoder + decoder) * scale
    total += 6 * arch.base_filters * 2**arch.depth * 8.0**-arch.depth  # bottleneck
    return total


def model_activation_floats(model, voxels: int) -> float:
    """The same sum from a built Keras model's layer outputs, per voxel (a cross-check)."""
    floats = 0
    for layer in model.layers:
        for shape in _output_shapes(layer):
            count = 1
            for dim in shape[1:]:
                count *= int(dim)
            floats += count
    return floats / voxels


def _output_shapes(layer) -> list:
    shape = layer.output_shape
    return shape if isinstance(shape, list) else [shape]


# ---------------------------------------------------------------- child: one backend, one setting


def _apply_env(setting: str) -> None:
    """Environment switches that TensorFlow reads at import: set before it loads."""
    parts = setting.split("+")
    if "onednn0" in parts:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    if "onednn1" in parts:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if "avx2" in parts:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf_optimizer_options(parts: Sequence[str]) -> dict[str, bool]:
    options = {}
    if "nolayout" in parts:
        options["layout_optimizer"] = False
    if "noremap" in parts:
        options["remapping"] = False
    if "nograppler" in parts:
        options["disable_meta_optimizer"] = True
    return options


def _tf_step(model, mode: str, images, labels, kernel_labels=None):
    """A callable running one training step of ``model`` the way ``mode`` says; the
    GradientTape modes build their ops under ``kernel_labels`` (op type → kernel label)."""
    import contextlib

    import tensorflow as tf

    from distmis.backends.tensorflow.loop import fit_epoch

    if mode == "fit":
        data = tf.data.Dataset.from_tensors((images, labels)).repeat()
        epoch = iter(range(10**6))
        return lambda: fit_epoch(model, data, 1, next(epoch))["loss"]
    if mode == "tob":
        return lambda: model.train_on_batch(images, labels, return_dict=True)["loss"]

    def step(x, y):
        graph = tf.compat.v1.get_default_graph()
        labelled = (
            graph._kernel_label_map(kernel_labels) if kernel_labels else contextlib.nullcontext()
        )
        with labelled:
            with tf.GradientTape() as tape:
                loss = model.compiled_loss(y, model(x, training=True))
            variables = model.trainable_variables
            gradients = tape.gradient(loss, variables)
        model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    run = step if mode == "eager" else tf.function(step)
    return lambda: run(images, labels)


def _onednn_enabled() -> str:
    """Whether TensorFlow runs its oneDNN (_Mkl*) kernels here, and why."""
    from tensorflow.python.util import _pywrap_util_port

    env = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset: CPU-feature default")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{_pywrap_util_port.IsMklEnabled()} (TF_ENABLE_ONEDNN_OPTS {env}{', max ISA ' + isa if isa else ''})"


def _tensorflow_child(shape, arch: Architecture, setting: str, cpus: int):
    _apply_env(setting)
    from distmis.backends.tensorflow.loop import compiled_unet, limit_threads

    # isort: split
    import numpy as np
    import tensorflow as tf

    parts = setting.split("+")
    limit_threads(cpus)
    if "interop1" in parts:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.optimizer.set_experimental_options(_tf_optimizer_options(parts))
    model = compiled_unet(
        (*shape, IN_CHANNELS),
        LABEL_CHANNELS,
        depth=arch.depth,
        base_filters=arch.base_filters,
        seed=SEED,
        **arch.hparams().model_kwargs(),
        **arch.hparams().optimizer_kwargs(),
    )
    if "jit" in parts:
        model.compile(
            optimizer=model.optimizer,
            loss=model.loss,
            metrics=model.compiled_metrics._user_metrics,
            jit_compile=True,
        )
    rng = np.random.default_rng(SEED)
    images = tf.constant(rng.standard_normal((1, *shape, IN_CHANNELS), dtype=np.float32))
    labels = tf.constant((rng.random((1, *shape, 1)) > 0.9).astype(np.float32))
    mode = next((p for p in parts if p in TF_STEPS), "tape" if "eigen" in parts else "fit")
    if "eigen" in parts and mode not in ("tape",):
        raise SystemExit("setting eigen needs the tape step (a tf.function graph)")
    notes = {
        "onednn": _onednn_enabled(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "model act floats/voxel": round(model_activation_floats(model, int(np.prod(shape))), 3),
        "grappler": tf.config.optimizer.get_experimental_options(),
    }
    kernel_labels = EIGEN_KERNELS if "eigen" in parts else None
    return _tf_step(model, mode, images, labels, kernel_labels), notes


def _torch_child(shape, arch: Architecture, setting: str, cpus: int):
    import torch

    from distmis.backends.torch.loop import build_training_step, limit_threads

    limit_threads(cpus)
    architecture = {
        "in_channels": IN_CHANNELS,
        "out_channels": len(LABEL_CHANNELS),
        "depth": arch.depth,
        "base_filters": arch.base_filters,
        **arch.hparams().model_kwargs(),
    }
    step = build_training_step(
        architecture, torch.device("cpu"), seed=SEED, **arch.hparams().optimizer_kwargs()
    )
    step.network.train()
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn((1, IN_CHANNELS, *shape), generator=generator)
    labels = (torch.rand((1, len(LABEL_CHANNELS), *shape), generator=generator) > 0.9).float()
    notes = {"torch threads": torch.get_num_threads()}
    return (lambda: float(step(images, labels)[0].mean())), notes


def run_child(backend: str, shape, arch: Architecture, setting: str, steps: int, cpus: int) -> dict:
    """Build, measure the baseline, run ``steps`` steps each with its own peak; the result."""
    started = time.perf_counter()
    build = _tensorflow_child if backend == "tensorflow" else _torch_child
    step, notes = build(shape, arch, setting, cpus)
    baseline, build_peak = rss_mib(), peak_mib()
    peaks, seconds, losses = [], [], []
    for _ in range(steps):
        reset_peak()
        begun = time.perf_counter()
        losses.append(float(step()))
        seconds.append(time.perf_counter() - begun)
        peaks.append(peak_mib())
    return {
        "baseline_mib": baseline,
        "build_peak_mib": build_peak,
        "step_peaks_mib": peaks,
        "after_mib": rss_mib(),
        "step_seconds": seconds,
        "losses": losses,
        "total_seconds": time.perf_counter() - started,
        "notes": notes,
    }


# ---------------------------------------------------------------- parent: run and watch children


def _watch(process: subprocess.Popen, limit_mib: float, state: dict) -> None:
    """Kill ``process`` if its RSS passes ``limit_mib``; note the highest RSS seen."""
    pid = str(process.pid)
    while process.poll() is None:
        rss = _status_kib("VmRSS", pid) / 1024
        state["seen_mib"] = max(state.get("seen_mib", 0.0), rss)
        if rss > limit_mib:
            state["killed"] = True
            process.kill()
            return
        time.sleep(0.02)


def measure(
    backend: str, shape, arch: Architecture, setting: str, steps: int, cpus: int, limit_gb: float
) -> dict:
    """One child run; its result, or ``{"error": ...}`` when it died or was killed."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        backend,
        "x".join(map(str, shape)),
        setting,
        f"--steps={steps}",
        f"--cpus={cpus}",
        f"--depth={arch.depth}",
        f"--base-filters={arch.base_filters}",
        f"--norm={arch.norm}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state: dict = {}
    watcher = threading.Thread(target=_watch, args=(process, limit_gb * 1024, state), daemon=True)
    watcher.start()
    out, err = process.communicate()
    watcher.join()
    if state.get("killed"):
        return {"error": f"killed at RSS > {limit_gb:g} GB", "seen_mib": state["seen_mib"]}
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (err or out).strip().splitlines()[-3:]
    return {"error": f"exit {process.returncode}: {' | '.join(tail)}"}


# ---------------------------------------------------------------- printing


def voxels_of(shape) -> int:
    return shape[0] * shape[1] * shape[2]


def print_row(backend: str, shape, setting: str, result: dict, act_per_voxel: float) -> None:
    voxels = voxels_of(shape)
    size = "x".join(map(str, shape))
    if "error" in result:
        seen = result.get("seen_mib")
        extra = f" (RSS seen {seen:.0f} MiB)" if seen else ""
        print(f"  {backend:<10} {size:<11} {setting:<18} {voxels:>9}  {result['error']}{extra}")
        return
    base, peaks = result["baseline_mib"], result["step_peaks_mib"]
    peak = max(peaks)
    delta = (peak - base) * MIB / voxels
    full = base + delta * voxels_of(FULL_SIZE) / MIB
    act = 4 * act_per_voxel
    steps = "/".join(f"{p:.0f}" for p in peaks)
    secs = "/".join(f"{s:.1f}" for s in result["step_seconds"])
    print(
        f"  {backend:<10} {size:<11} {setting:<18} {voxels:>9} {base:>8.0f} {steps:>13}"
        f" {delta:>7.0f} {delta / act:>6.1f} {full / 1024:>8.1f} {secs:>11}"
    )


def print_header(act_per_voxel: float) -> None:
    print(
        f"\nactivations: {act_per_voxel:.1f} floats = {4 * act_per_voxel:.0f} bytes per voxel;"
        f" full size {'x'.join(map(str, FULL_SIZE))} = {voxels_of(FULL_SIZE)} voxels"
    )
    print(
        f"  {'backend':<10} {'size':<11} {'setting':<18} {'voxels':>9} {'base MiB':>8}"
        f" {'step peaks':>13} {'Δ/vox':>7} {'Δ/act':>6} {'full est':>8} {'step s':>11}"
    )
    print(
        f"  {'':<10} {'':<11} {'':<18} {'':>9} {'':>8} {'MiB':>13} {'B':>7} {'':>6}"
        f" {'GiB':>8} {'':>11}"
    )


def fit_line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``peak MiB = intercept + slope × voxels``: (intercept MiB, slope B/voxel)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return mean_y - slope * mean_x, slope * MIB


def print_fits(runs: dict, act_per_voxel: float) -> None:
    """Per backend and setting: the peak's slope over the sizes measured, the full-size
    extrapolation, and the ratio to torch's."""
    print(
        f"\nlinear fit of peak over voxels (two or more sizes), extrapolated to"
        f" {'x'.join(map(str, FULL_SIZE))}"
    )
    print(
        f"  {'backend':<10} {'setting':<18} {'sizes':>5} {'B/voxel':>8} {'/act':>5}"
        f" {'fixed MiB':>9} {'full GiB':>8} {'vs torch':>8}"
    )
    fits = {}
    for key, results in runs.items():
        points = [
            (voxels_of(shape), max(r["step_peaks_mib"])) for shape, r in results if "error" not in r
        ]
        if len(points) >= 2 and len({x for x, _ in points}) >= 2:
            intercept, slope = fit_line(points)
            fits[key] = (
                len(points),
                intercept,
                slope,
                intercept + slope * voxels_of(FULL_SIZE) / MIB,
            )
    if not fits:
        print("  (none: every setting needs two or more sizes measured)")
        return
    torch_full = next((f[3] for (b, _), f in fits.items() if b == "torch"), None)
    for (backend, setting), (count, intercept, slope, full) in fits.items():
        ratio = f"{full / torch_full:.2f}x" if torch_full else "-"
        print(
            f"  {backend:<10} {setting:<18} {count:>5} {slope:>8.0f} {slope / (4 * act_per_voxel):>5.2f}"
            f" {intercept:>9.0f} {full / 1024:>8.1f} {ratio:>8}"
        )


# ---------------------------------------------------------------- arguments


def parse_size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be XxYxZ, got {text!r}")
    return parts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=list(DEFAULT_SIZES))
    parser.add_argument("--full", action="store_true", help=f"add {FULL_SIZE} (>24 GB for TF)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["fit", "onednn0", "onednn0+eigen"],
        help="tensorflow settings, one child each; '+' combines: " + ", ".join(TF_SETTINGS),
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-rss-gb", type=float, default=9.0)
    parser.add_argument("--depth", type=int, default=Architecture.depth)
    parser.add_argument("--base-filters", type=int, default=Architecture.base_filters)
    parser.add_argument("--norm", choices=("batch", "group"), default=Architecture.norm)
    parser.add_argument(
        "--child", nargs=3, metavar=("BACKEND", "SIZE", "SETTING"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.full:
        args.sizes.append(FULL_SIZE)
    factor = 2**args.depth
    for shape in args.sizes:
        if any(s % factor for s in shape):
            parser.error(f"size {shape} is not divisible by 2**depth = {factor}")
    for setting in args.settings:
        unknown = [p for p in setting.split("+") if p not in TF_SETTINGS]
        if unknown:
            parser.error(f"unknown setting(s) {unknown}; known: {', '.join(TF_SETTINGS)}")
    return args


def child_main(args: argparse.Namespace) -> int:
    backend, size, setting = args.child
    arch = Architecture(args.depth, args.base_filters, args.norm)
    result = run_child(backend, parse_size(size), arch, setting, args.steps, args.cpus)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    arch = Architecture(args.depth, args.base_filters, args.norm)
    env = {
        k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "MALLOC_ARENA_MAX") if k in os.environ
    }
    print_machine(
        f"{args.cpus} per child",
        ("numpy", "tensorflow", "tf-keras", "torch"),
        [("env", str(env or "(no TF/malloc switches set)"))],
    )
    print(
        f"\nmodel: U-Net depth {arch.depth} base {arch.base_filters} {arch.norm} norm,"
        f" {IN_CHANNELS} in / {len(LABEL_CHANNELS)} out channels, batch 1, Adam; {args.steps}"
        f" steps per child (first includes tracing); children killed above {args.max_rss_gb:g} GB"
    )
    act = activation_floats_per_voxel(arch, IN_CHANNELS, len(LABEL_CHANNELS))
    print_header(act)
    runs: dict[tuple[str, str], list[tuple[tuple[int, int, int], dict]]] = {}
    for backend in args.backends:
        settings = args.settings if backend == "tensorflow" else list(TORCH_SETTINGS)
        for setting in settings:
            for shape in sorted(args.sizes, key=voxels_of):
                result = measure(
                    backend, shape, arch, setting, args.steps, args.cpus, args.max_rss_gb
                )
                print_row(backend, shape, setting, result, act)
                sys.stdout.flush()
                runs.setdefault((backend, setting), []).append((shape, result))
    print_fits(runs, act)
    print("\nnotes (last child of each setting)")
    for (backend, setting), results in runs.items():
        note = next((r["notes"] for _, r in reversed(results) if "notes" in r), None)
        print(f"  {backend} {setting}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
