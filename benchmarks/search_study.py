"""The search study: grid vs random search vs TPE at one budget of configurations, each with
and without ASHA, per mode and G, on the demo data (docs/explanation/search.md "The demo
study").

Every run is the real ``distmis train`` in a subprocess (as a training rule runs it) over
``config.yaml`` + ``config.search.yaml`` + the variant's own overlay (its search algorithm and
scheduler), in a results folder of the variant's own (the training layout holds one run per
backend, mode and G). Then the real scaling analysis of all of them as one study,
``distmis scaling --results <every variant's folder>``: one series per (mode, search,
scheduler), every run timed to one quality target (``report.quality_target``, by default
0.95 × the best validation Dice any run reached). It prints, per mode and G, each variant's
makespan, configurations finished and stopped early, best validation Dice and time to the
target, and writes the study's scaling.csv and figures under ``<out>/scaling``.

The grid is the one search that cannot sample: it trains :data:`GRID_SPACE`, 8 points of the
overlay's domain (lr 1e-3 … 1e-2 log-spaced, both norms), so all three train 8
configurations. Random search and TPE sample the overlay's ``search_space`` with its seed.

A run whose ``summary.json`` exists is kept, not rerun (remove its folder to measure it
again). Needs the demo's TFRecords: ``make demo``, or ``snakemake --cores 2
results/tfrecords/info.json``.

Usage: python benchmarks/search_study.py [--data results/tfrecords] [--out results/search_study]
       [--backend torch] [--modes data experiment] [--gpus 1 2]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import cpu_model, loadavg, version

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (ROOT / "config.yaml", ROOT / "config.search.yaml")
GRID_SPACE = {
    "lr": [0.001, 0.002, 0.005, 0.01],
    "norm": ["batch", "group"],
    "beta_2": [0.999],
    "amsgrad": [False],
}
# name -> what the variant overlays on config.search.yaml (whose search is TPE with ASHA).
VARIANTS = {
    "grid": {"search": {"algorithm": "grid", "samples": None}, "search_space": GRID_SPACE},
    "random": {"search": {"algorithm": "random"}},
    "tpe": {"search": {"algorithm": "tpe"}},
}
SCHEDULERS = ("none", "asha")


def variant_overlays(backend: str) -> dict[str, dict]:
    """``{grid,random,tpe}_{none,asha}`` -> its overlay's ``train`` section."""
    return {
        f"{name}_{scheduler}": {**train, "scheduler": scheduler, "backend": backend}
        for name, train in VARIANTS.items()
        for scheduler in SCHEDULERS
    }


def train(config_files: list[Path], data: Path, out: Path, mode: str, gpus: int) -> float:
    """One run through the real CLI; its wall seconds."""
    command = [sys.executable, "-m", "distmis.cli", "train", "--mode", mode, "--gpus", str(gpus),
               "--data", str(data), "--out", str(out),
               "--config", *map(str, config_files)]  # fmt: skip
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"training failed ({' '.join(command)}); its output: {log}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "results/tfrecords")
    parser.add_argument("--out", type=Path, default=ROOT / "results/search_study")
    parser.add_argument("--backend", default="torch", choices=("tensorflow", "torch"))
    parser.add_argument("--modes", nargs="+", default=["data", "experiment"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not (args.data / "info.json").is_file():
        sys.exit(f"no {args.data}/info.json: make the demo data first (make demo)")

    print(f"machine: {cpu_model()}, load {loadavg()}; torch {version('torch')}, "
          f"ray {version('ray')}, optuna {version('optuna')}")  # fmt: skip
    folders = []
    for name, overlay in variant_overlays(args.backend).items():
        folder = args.out / name
        overlay_file = folder / "overlay.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        overlay_file.write_text(yaml.safe_dump({"train": overlay}, sort_keys=False))
        for mode in args.modes:
            for gpus in args.gpus:
                run = folder / args.backend / mode / f"{gpus}gpu"
                if (run / "summary.json").is_file():
                    print(f"{name:<12} {mode:<10} G={gpus}: kept (summary.json exists)")
                    continue
                seconds = train([*CONFIGS, overlay_file], args.data, run, mode, gpus)
                print(f"{name:<12} {mode:<10} G={gpus}: {seconds:6.1f} s", flush=True)
        folders.append(folder)

    scaling = args.out / "scaling"
    command = [sys.executable, "-m", "distmis.cli", "scaling", "--out", str(scaling),
               "--config", *map(str, CONFIGS), "--results", *map(str, folders)]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with (scaling / "scaling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    print(f"\nquality target: validation Dice {float(rows[0]['quality_target_dice']):.3f}")
    print(f"{'mode':<10} {'G':>2} {'search':<9} {'ASHA':<5} {'makespan':>9} {'ok':>3} "
          f"{'stop':>4} {'best Dice':>9} {'to target':>9}")  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["mode"], int(r["gpus"]), r["search"], r["scheduler"])):
        target = row["time_to_target_seconds"]
        print(f"{row['mode']:<10} {row['gpus']:>2} {row['search']:<9} {row['scheduler']:<5} "
              f"{float(row['makespan_seconds']):8.1f}s {row['trials_ok']:>3} "
              f"{row['trials_stopped']:>4} {float(row['best_val_dice']):9.3f} "
              f"{(f'{float(target):8.1f}s') if target else 'never':>9}")  # fmt: skip
    print(f"\nscaling.csv and figures: {scaling}")


if __name__ == "__main__":
    main()
