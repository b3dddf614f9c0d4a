"""benchmarks/gpu_unet.py: runs where only PyTorch is installed, and times the loop's own step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# As `python benchmarks/gpu_unet.py` runs: the script's folder first on sys.path.
RUN = """
import json, sys
sys.path.insert(0, "benchmarks")
import gpu_unet
rc = gpu_unet.main(sys.argv[1:])
heavy = sorted(m for m in ("tensorflow", "tf_keras", "keras", "ray") if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_cpu_smoke_run_imports_no_tensorflow_or_ray_and_uses_the_loops_adam(tmp_path):
    out = tmp_path / "results.json"
    args = ["--device", "cpu", "--shape", "8", "8", "8", "--depth", "1", "--base-filters", "2"]
    args += ["--steps", "1", "--warmup", "1", "--modes", "fp32,bf16", "--channels-last-3d"]
    args += ["--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"rc": 0, "heavy": []}
    results = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in results] == ["fp32", "bf16"]
    for result in results:
        # The loop's adam (Keras' beta_1 and epsilon), not torch.optim.Adam's defaults.
        assert result["adam"] == {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-7, "amsgrad": False}
        assert result["ms_per_step"] > 0
    # fp32 only: on the CPU, PyTorch's bf16 Conv3d backward (channels_last_3d above all) returns
    # a NaN gradient now and then (config refuses bf16 + channels_last_3d on CPUs).
    assert 0.0 <= results[0]["loss_mean"] <= 1.0
