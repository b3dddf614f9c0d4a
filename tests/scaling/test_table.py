"""The scaling table: speedup and efficiency per series, run columns, scaling.csv, test Dice."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from distmis.errors import ContractError
from distmis.run_folder import RunSearch
from distmis.scaling.quality import QualityTarget
from distmis.scaling.table import (
    attach_test_dice,
    own_efficiency,
    own_speedup,
    read_scaling_csv,
    scaling_table,
    write_scaling_csv,
)
from distmis.scaling.timings import load_runs, search_label
from tests.scaling.helpers import (
    GRID,
    RANDOM,
    START,
    eval_summary,
    trial_row,
    write_epochs,
    write_final_epochs,
    write_run,
    write_search_runs,
)


def test_speedup_and_efficiency_exact(tmp_path: Path):
    for gpus, makespan in ((1, 100.0), (2, 60.0), (4, 30.0)):
        write_run(tmp_path, "experiment", gpus, makespan)
    table = scaling_table(load_runs(tmp_path))
    assert list(table["gpus"]) == [1, 2, 4]
    assert list(table["base_gpus"]) == [1, 1, 1]
    assert list(table["speedup_vs_1gpu"]) == pytest.approx([1.0, 5 / 3, 10 / 3], rel=1e-12)
    assert list(table["efficiency_vs_1gpu"]) == pytest.approx([1.0, 5 / 6, 5 / 6], rel=1e-12)
    assert list(own_speedup(table)) == pytest.approx([1.0, 5 / 3, 10 / 3], rel=1e-12)


def test_columns_in_documented_order(tmp_path: Path):
    write_run(tmp_path, "data", 1, 100.0)
    table = scaling_table(load_runs(tmp_path))
    assert list(table.columns) == [
        "backend",
        "mode",
        "search",
        "scheduler",
        "gpus",
        "gpus_per_trial",
        "base_gpus",
        "makespan_seconds",
        "time_to_best_seconds",
        "time_to_target_seconds",
        "quality_target_dice",
        "speedup_vs_1gpu",
        "efficiency_vs_1gpu",
        "trials_ok",
        "trials_failed",
        "trials_stopped",
        "mean_trial_seconds",
        "volumes_per_second",
        "best_val_dice",
        "resumed",
        "device",
        "runner",
        "startup_seconds",
    ]
    assert (table.loc[0, "backend"], table.loc[0, "runner"]) == ("tensorflow", "ray")


def test_missing_base_uses_smallest_g_and_says_so(tmp_path: Path):
    write_run(tmp_path, "data", 2, 80.0)
    write_run(tmp_path, "data", 4, 50.0)
    table = scaling_table(load_runs(tmp_path))
    assert "speedup_vs_1gpu" not in table.columns
    assert list(table["base_gpus"]) == [2, 2]
    assert list(table["speedup_vs_2gpu"]) == pytest.approx([1.0, 1.6], rel=1e-12)
    # 1.6x from doubling the GPUs: efficiency 0.8 relative to the 2-GPU base.
    assert list(table["efficiency_vs_2gpu"]) == pytest.approx([1.0, 0.8], rel=1e-12)


def test_series_with_different_bases_fill_their_own_columns(tmp_path: Path):
    write_run(tmp_path, "data", 1, 100.0)
    write_run(tmp_path, "data", 2, 50.0)
    write_run(tmp_path, "experiment", 2, 90.0)
    write_run(tmp_path, "experiment", 4, 60.0)
    table = scaling_table(load_runs(tmp_path)).set_index(["mode", "gpus"])
    assert table.loc[("data", 2), "speedup_vs_1gpu"] == pytest.approx(2.0)
    assert pd.isna(table.loc[("data", 2), "speedup_vs_2gpu"])
    assert table.loc[("experiment", 4), "speedup_vs_2gpu"] == pytest.approx(1.5)
    assert pd.isna(table.loc[("experiment", 4), "speedup_vs_1gpu"])
    own = own_efficiency(table.reset_index())
    assert list(own) == pytest.approx([1.0, 1.0, 1.0, 0.75], rel=1e-12)


def test_each_backend_makes_its_own_series(tmp_path: Path):
    write_run(tmp_path, "data", 1, 100.0)
    write_run(tmp_path, "data", 2, 50.0)
    write_run(tmp_path, "data", 1, 80.0, backend="torch")
    write_run(tmp_path, "data", 2, 20.0, backend="torch")
    runs = load_runs(tmp_path)  # found in {backend}/{mode}/{G}gpu
    assert [r.directory.relative_to(tmp_path).as_posix() for r in runs] == [
        "tensorflow/data/1gpu",
        "tensorflow/data/2gpu",
        "torch/data/1gpu",
        "torch/data/2gpu",
    ]
    table = scaling_table(runs)
    speedups = {
        (row.backend, row.gpus): row.speedup_vs_1gpu for row in table.itertuples(index=False)
    }
    assert speedups == {
        ("tensorflow", 1): 1.0,
        ("tensorflow", 2): 2.0,
        ("torch", 1): 1.0,
        ("torch", 2): 4.0,
    }


def test_throughput_mean_seconds_and_counts(tmp_path: Path):
    rows = [
        trial_row("a", START, START + 10, volumes_per_second=2.0),  # 20 volumes
        trial_row("b", START + 10, START + 40, volumes_per_second=1.0),  # 30 volumes
        trial_row("c", START + 40, START + 45, status="failed"),
    ]
    write_run(tmp_path, "experiment", 1, 100.0, rows, best_val_dice=0.7, use_gpu=False)
    row = scaling_table(load_runs(tmp_path)).iloc[0]
    assert (row["trials_ok"], row["trials_failed"]) == (2, 1)
    assert row["mean_trial_seconds"] == pytest.approx(20.0)  # failed trial not averaged
    assert row["volumes_per_second"] == pytest.approx(0.5)  # 50 volumes / 100 s makespan
    assert row["best_val_dice"] == pytest.approx(0.7)
    assert row["device"] == "cpu"


def test_no_best_gives_nan_dice(tmp_path: Path):
    rows = [trial_row("a", START, START + 5, status="failed")]
    write_run(tmp_path, "data", 1, 10.0, rows, best_val_dice=None)
    row = scaling_table(load_runs(tmp_path)).iloc[0]
    assert pd.isna(row["best_val_dice"]) and pd.isna(row["mean_trial_seconds"])
    assert row["volumes_per_second"] == 0.0


def test_series_mixing_runners_is_kept_and_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    write_run(tmp_path, "experiment", 1, 100.0, runner="local")
    write_run(tmp_path, "experiment", 2, 60.0)
    with caplog.at_level(logging.WARNING):
        table = scaling_table(load_runs(tmp_path))
    assert list(table["runner"]) == ["local", "ray"]
    assert "mixes runners (local, ray)" in caplog.text


def test_resumed_run_is_kept_and_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_run(tmp_path, "data", 1, 100.0, resumed=True)
    write_run(tmp_path, "data", 2, 60.0)
    with caplog.at_level(logging.WARNING):
        table = scaling_table(load_runs(tmp_path))
    assert list(table["resumed"]) == [True, False]
    assert "resumed" in caplog.text and "base run" in caplog.text


def test_scaling_csv_round_trip(tmp_path: Path):
    write_run(tmp_path / "train", "data", 1, 100.0, resumed=True)
    write_run(tmp_path / "train", "data", 2, 60.0)
    table = scaling_table(load_runs(tmp_path / "train"))
    path = write_scaling_csv(table, tmp_path / "out" / "scaling.csv")
    back = read_scaling_csv(path)
    assert list(back.columns) == list(table.columns)
    assert list(back["resumed"]) == [True, False]
    assert list(back["speedup_vs_1gpu"]) == pytest.approx([1.0, 5 / 3], rel=1e-5)
    assert [p.name for p in path.parent.iterdir()] == ["scaling.csv"]  # no temp file left


def test_read_scaling_csv_names_missing_columns(tmp_path: Path):
    path = tmp_path / "scaling.csv"
    path.write_text("backend,mode,gpus\ntensorflow,data,1\n")
    with pytest.raises(ContractError, match=r"scaling\.csv lacks column\(s\) base_gpus"):
        read_scaling_csv(path)


def test_hybrid_series_per_k_with_their_own_base(tmp_path: Path):
    write_run(tmp_path, "data", 2, 100.0)
    write_run(tmp_path, "hybrid", 2, 90.0, gpus_per_trial=2)
    write_run(tmp_path, "hybrid", 4, 45.0, gpus_per_trial=2)
    write_run(tmp_path, "hybrid", 4, 60.0, gpus_per_trial=4)
    write_run(tmp_path, "hybrid", 8, 20.0, gpus_per_trial=4)
    table = scaling_table(load_runs(tmp_path))
    rows = table[["mode", "gpus", "gpus_per_trial", "base_gpus"]].itertuples(index=False)
    assert [tuple(row) for row in rows] == [
        ("data", 2, 2, 2),
        ("hybrid2", 2, 2, 2),
        ("hybrid2", 4, 2, 2),
        ("hybrid4", 4, 4, 4),
        ("hybrid4", 8, 4, 4),
    ]
    assert list(table["speedup_vs_2gpu"].iloc[:3]) == pytest.approx([1.0, 1.0, 2.0])
    assert list(table["speedup_vs_4gpu"].iloc[3:]) == pytest.approx([1.0, 3.0])
    assert list(own_efficiency(table)) == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.5])


def test_stopped_trials_count_as_work_not_as_trial_length(tmp_path: Path):
    rows = [
        trial_row("a", START, START + 10, volumes_per_second=2.0),  # 20 volumes
        trial_row("b", START + 10, START + 40, volumes_per_second=1.0),  # 30 volumes
        trial_row("s", START + 40, START + 44, status="stopped", volumes_per_second=5.0),  # 20
        trial_row("c", START + 44, START + 45, status="failed"),
    ]
    write_run(tmp_path, "experiment", 1, 100.0, rows, scheduler="asha", startup_seconds=6.5)
    row = scaling_table(load_runs(tmp_path)).iloc[0]
    assert (row["trials_ok"], row["trials_failed"], row["trials_stopped"]) == (2, 1, 1)
    assert row["mean_trial_seconds"] == pytest.approx(20.0)  # whole trials only: (10 + 30) / 2
    assert row["volumes_per_second"] == pytest.approx(0.7)  # (20 + 30 + 20) volumes / 100 s
    assert (row["scheduler"], row["startup_seconds"]) == ("asha", 6.5)


def test_time_to_best_beside_the_makespan(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 40.0, [trial_row("a", START, START + 35)])
    write_epochs(run, "a", [(1, 10.0, 0.5), (2, 20.0, 0.79), (3, 30.0, 0.8)])
    runs = load_runs(tmp_path)
    assert scaling_table(runs).loc[0, "time_to_best_seconds"] == pytest.approx(20.0)
    assert scaling_table(runs, quality_tolerance=0).loc[0, "time_to_best_seconds"] == 30.0


def three_runs_ending_at_different_dice(root: Path) -> list:
    """Validations (seconds since the start, Dice) of one trial per run, across backends:

    - tensorflow/data at G = 1: 10 s 0.5, 20 s 0.79, 30 s 0.8 (the study's best, 0.8);
    - torch/experiment at G = 1: 5 s 0.7, 15 s 0.77;
    - tensorflow/data at G = 2: 10 s 0.6, 25 s 0.74 (ends below 0.95 × 0.8 = 0.76).
    """
    for backend, mode, gpus, points in (
        ("tensorflow", "data", 1, [(1, 10.0, 0.5), (2, 20.0, 0.79), (3, 30.0, 0.8)]),
        ("torch", "experiment", 1, [(1, 5.0, 0.7), (2, 15.0, 0.77)]),
        ("tensorflow", "data", 2, [(1, 10.0, 0.6), (2, 25.0, 0.74)]),
    ):
        run = write_run(root, mode, gpus, 40.0, backend=backend)
        write_epochs(run, "t1", points)
    return load_runs(root)


def test_time_to_target_is_timed_to_one_bar_for_the_whole_study(tmp_path: Path):
    runs = three_runs_ending_at_different_dice(tmp_path)
    table = scaling_table(runs).set_index(["backend", "mode", "gpus"])
    # Default target: 0.95 × 0.8, the best any run reached (tensorflow data G = 1's).
    assert table["quality_target_dice"].tolist() == pytest.approx([0.76] * 3, abs=1e-12)
    reached = table["time_to_target_seconds"]
    assert reached[("tensorflow", "data", 1)] == 20.0  # 0.79 at 20 s is the first >= 0.76
    assert reached[("torch", "experiment", 1)] == 15.0  # 0.77 at 15 s
    # Never reached: NaN, not a made-up time, although it did reach its own best (at 25 s).
    assert math.isnan(reached[("tensorflow", "data", 2)])
    assert table.loc[("tensorflow", "data", 2), "time_to_best_seconds"] == 25.0


def test_time_to_target_fraction_and_absolute_dice(tmp_path: Path):
    runs = three_runs_ending_at_different_dice(tmp_path)
    whole = scaling_table(runs, quality_target=QualityTarget(fraction_of_best=1.0))
    assert whole["quality_target_dice"].tolist() == [0.8] * 3
    # Sorted by backend, mode, G: tensorflow data 1, tensorflow data 2, torch experiment 1.
    assert whole["time_to_target_seconds"].tolist()[0] == 30.0
    assert whole["time_to_target_seconds"].isna().tolist() == [False, True, True]
    absolute = scaling_table(runs, quality_target=QualityTarget(dice=0.7))
    assert absolute["quality_target_dice"].tolist() == [0.7] * 3
    assert absolute["time_to_target_seconds"].tolist() == [20.0, 25.0, 5.0]


def test_time_to_target_without_any_validation_is_empty(tmp_path: Path):
    write_run(tmp_path, "data", 1, 100.0)  # no epochs.jsonl: no curve, no study best
    table = scaling_table(load_runs(tmp_path))
    assert table["quality_target_dice"].isna().all()
    assert table["time_to_target_seconds"].isna().all()


def test_a_run_with_asha_is_its_own_series_never_the_base_of_one_without(tmp_path: Path):
    # Early stopping trains less of each configuration: other work, so no speedup between.
    write_run(tmp_path, "data", 1, 100.0)
    write_run(tmp_path, "data", 2, 40.0, scheduler="asha")
    table = scaling_table(load_runs(tmp_path)).set_index("scheduler")
    assert table.loc["asha", "base_gpus"] == 2 and table.loc["asha", "speedup_vs_2gpu"] == 1.0
    assert table.loc["none", "base_gpus"] == 1


def test_scaling_csv_of_a_run_validated_once_per_trial(tmp_path: Path):
    rows = [trial_row("t1", START + 1, START + 99)]
    run = write_run(tmp_path / "train", "data", 1, 100.0, rows, startup_seconds=2.5)
    write_final_epochs(run, rows)
    path = write_scaling_csv(scaling_table(load_runs(tmp_path / "train")), tmp_path / "s.csv")
    row = pd.read_csv(path, keep_default_na=False).iloc[0]
    assert (row["scheduler"], row["startup_seconds"], row["gpus_per_trial"]) == ("none", 2.5, 1)
    # Its one validation at its end, 1 s before the 100 s makespan.
    assert row["time_to_best_seconds"] == pytest.approx(99.0)


def test_read_scaling_csv_from_before_the_newer_columns(tmp_path: Path):
    write_run(tmp_path / "train", "data", 1, 100.0)
    write_run(tmp_path / "train", "data", 2, 60.0)
    write_run(tmp_path / "train", "experiment", 2, 60.0)
    table = scaling_table(load_runs(tmp_path / "train"))
    newer = [
        "gpus_per_trial",
        "time_to_best_seconds",
        "time_to_target_seconds",
        "quality_target_dice",
        "trials_stopped",
        "scheduler",
        "search",
    ]
    old = table.drop(columns=[*newer, "startup_seconds"])
    path = write_scaling_csv(old, tmp_path / "old.csv")
    back = read_scaling_csv(path)
    assert list(back["gpus_per_trial"]) == [1, 2, 1]  # data: G, experiment: 1
    assert list(back["trials_stopped"]) == [0, 0, 0]
    assert list(back["scheduler"]) == ["none"] * 3
    assert back["time_to_best_seconds"].isna().all() and back["startup_seconds"].isna().all()
    assert back["time_to_target_seconds"].isna().all()
    assert back["quality_target_dice"].isna().all()
    assert list(back["search"]) == ["grid"] * 3  # before summary.json /2: the whole grid


# --- searches: one series per (backend, mode, search) --------------------------------------


def test_search_label_names_the_algorithm_and_its_samples():
    assert search_label("grid", None) == "grid"
    assert search_label("random", 8) == "random×8"
    assert search_label("tpe", 16) == "tpe×16"


def test_grid_and_random_runs_of_one_mode_and_g_are_two_series(tmp_path: Path):
    grid_1, grid_2, random_1, random_2 = write_search_runs(
        tmp_path,
        [
            (GRID, "data", 1, 100.0),
            (GRID, "data", 2, 60.0),
            (RANDOM, "data", 1, 40.0),
            (RANDOM, "data", 2, 25.0),
        ],
    )
    # The study's best is 0.8, so the target is 0.76; each run keeps its own time to it.
    write_epochs(grid_1, "t1", [(1, 30.0, 0.8)])
    write_epochs(grid_2, "t1", [(1, 20.0, 0.8)])
    write_epochs(random_1, "t1", [(1, 15.0, 0.6), (2, 35.0, 0.78)])
    write_epochs(random_2, "t1", [(1, 12.0, 0.5)])  # never reaches it
    runs = load_runs(directories=[grid_1, grid_2, random_1, random_2])
    assert [r.series for r in runs] == [
        ("tensorflow", "data", "grid", "none"),
        ("tensorflow", "data", "grid", "none"),
        ("tensorflow", "data", "random×8", "none"),
        ("tensorflow", "data", "random×8", "none"),
    ]
    table = scaling_table(runs)
    assert list(zip(table["search"], table["gpus"], strict=True)) == [
        ("grid", 1),
        ("grid", 2),
        ("random×8", 1),
        ("random×8", 2),
    ]
    assert list(table["base_gpus"]) == [1, 1, 1, 1]
    # Each against its own search's G = 1: the grid 100 / 60, random search 40 / 25.
    assert list(table["speedup_vs_1gpu"]) == pytest.approx([1.0, 5 / 3, 1.0, 1.6], rel=1e-12)
    assert list(table["efficiency_vs_1gpu"]) == pytest.approx([1.0, 5 / 6, 1.0, 0.8], rel=1e-12)
    seconds = list(table["time_to_target_seconds"])
    assert seconds[:3] == [30.0, 20.0, 35.0] and math.isnan(seconds[3])
    # scaling.csv keeps the label as it is (× included).
    back = read_scaling_csv(write_scaling_csv(table, tmp_path / "scaling.csv"))
    assert list(back["search"]) == ["grid", "grid", "random×8", "random×8"]


def test_random_series_without_its_own_one_gpu_run_has_no_speedup_over_one_gpu(tmp_path: Path):
    table = scaling_table(
        load_runs(
            directories=write_search_runs(
                tmp_path,
                [
                    (GRID, "data", 1, 100.0),
                    (GRID, "data", 2, 50.0),
                    (RANDOM, "data", 2, 30.0),
                    (RANDOM, "data", 4, 20.0),
                ],
            )
        )
    )
    assert list(table["search"]) == ["grid", "grid", "random×8", "random×8"]
    # Never the grid's G = 1 (100 / 30 would be 3.3, a speedup random search never had):
    # its base is its own smallest G, which its column names.
    assert list(table["base_gpus"]) == [1, 1, 2, 2]
    assert list(table["speedup_vs_1gpu"][:2]) == pytest.approx([1.0, 2.0], rel=1e-12)
    assert table["speedup_vs_1gpu"][2:].isna().all()
    assert table["efficiency_vs_1gpu"][2:].isna().all()
    assert table["speedup_vs_2gpu"][:2].isna().all()
    assert list(table["speedup_vs_2gpu"][2:]) == pytest.approx([1.0, 1.5], rel=1e-12)
    assert list(table["efficiency_vs_2gpu"][2:]) == pytest.approx([1.0, 0.75], rel=1e-12)
    assert list(own_speedup(table)) == pytest.approx([1.0, 2.0, 1.0, 1.5], rel=1e-12)


def test_runs_differing_only_in_the_seed_are_one_series_and_refused(tmp_path: Path):
    directories = write_search_runs(
        tmp_path, [(RANDOM, "data", 2, 30.0), (RunSearch("random", 8, 1), "data", 2, 35.0)]
    )
    with pytest.raises(
        ContractError,
        match=r"backend=tensorflow mode=data search=random×8 scheduler=none G=2: one \(backend, "
        r"mode, search, scheduler, G\)",
    ):
        load_runs(directories=directories)


def test_tpe_and_random_of_as_many_samples_are_series_of_their_own(tmp_path: Path):
    table = scaling_table(
        load_runs(
            directories=write_search_runs(
                tmp_path,
                [
                    (RunSearch("tpe", 8, 0), "experiment", 1, 90.0),
                    (RunSearch("tpe", 8, 0), "experiment", 2, 60.0),
                    (RANDOM, "experiment", 1, 80.0),
                    (RANDOM, "experiment", 2, 50.0),
                ],
            )
        )
    )
    assert list(table["search"]) == ["random×8", "random×8", "tpe×8", "tpe×8"]
    assert list(table["speedup_vs_1gpu"]) == pytest.approx([1.0, 1.6, 1.0, 1.5], rel=1e-12)


# --- test Dice from rule evaluate ---------------------------------------------------------


def dice_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "backend": ["tensorflow", "tensorflow", "torch", "torch"],
            "mode": ["data", "data", "data", "experiment"],
            "gpus": [1, 2, 2, 2],
        }
    )


def test_attach_test_dice_puts_the_mean_region_dice_on_the_evaluated_run(tmp_path):
    evals = [
        # Evaluated from the model card; the backend from the summary's own key.
        eval_summary(
            tmp_path / "evaluate/tensorflow/data/summary.json",
            "results/train/tensorflow/data/2gpu/best_model.json",
            [0.9, 0.6],
            backend="tensorflow",
        ),
        # No backend key: the eval folder (and the model's) says torch.
        eval_summary(
            tmp_path / "evaluate/torch/data/summary.json",
            "results/train/torch/data/2gpu/best_model.pt",
            [0.5],
        ),
    ]
    out = attach_test_dice(dice_table(), evals)
    assert out["test_dice"].isna().tolist() == [True, False, False, True]
    assert out.loc[1, "test_dice"] == pytest.approx(0.75)
    assert out.loc[2, "test_dice"] == pytest.approx(0.5)


def test_attach_test_dice_reads_a_summary_from_before_backend_folders(tmp_path):
    summary = eval_summary(
        tmp_path / "evaluate/data/summary.json", "results/train/data/2gpu/best_model.keras", [0.8]
    )
    out = attach_test_dice(dice_table(), [summary])
    assert out["test_dice"].isna().tolist() == [True, False, True, True]  # TensorFlow's


@pytest.mark.parametrize(
    ("where", "model", "key"),
    [
        ("evaluate/torch/data", "results/train/torch/data/2gpu/best_model.json", "tensorflow"),
        ("evaluate/torch/data", "results/train/tensorflow/data/2gpu/best_model.json", None),
    ],
)
def test_attach_test_dice_refuses_a_backend_its_folders_contradict(tmp_path, where, model, key):
    extra = {} if key is None else {"backend": key}
    summary = eval_summary(tmp_path / where / "summary.json", model, [0.8], **extra)
    with pytest.raises(ContractError, match=r"summary\.json: backend .* disagrees"):
        attach_test_dice(dice_table(), [summary])


def test_attach_test_dice_leaves_a_g_measured_with_two_searches_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    table = pd.DataFrame(
        {
            "backend": ["tensorflow"] * 4,
            "mode": ["data"] * 4,
            "search": ["grid", "grid", "random×8", "random×8"],
            "scheduler": ["none", "none", "none", "asha"],
            "gpus": [1, 2, 2, 2],
        }
    )
    evals = [
        eval_summary(
            tmp_path / f"evaluate/tensorflow/data{gpus}/summary.json",
            f"results/train/tensorflow/data/{gpus}gpu/best_model.json",
            [0.8],
        )
        for gpus in (1, 2)
    ]
    with caplog.at_level(logging.WARNING):
        out = attach_test_dice(table, evals)
    # G = 1: only the grid ran it. G = 2: grid and random, with and without ASHA; which one
    # was scored is unknown.
    assert out.loc[0, "test_dice"] == pytest.approx(0.8)
    assert out["test_dice"][1:].isna().all()
    assert "several searches (grid, random×8, random×8 with asha)" in caplog.text
