"""Scaling analysis: timings contract, speedup table, timeline lanes (hand-computed cases)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from distmis.analysis.scaling import (
    attach_test_dice,
    own_efficiency,
    own_speedup,
    read_scaling_csv,
    scaling_table,
    write_scaling_csv,
)
from distmis.analysis.timeline import Bar, assign_lanes, busy_fraction, lane_count, timeline_bars
from distmis.analysis.timings import Run, TrialTiming, load_runs
from distmis.errors import ContractError
from distmis.train.results import TRIAL_COLUMNS

START = 1_000.0  # makespan_start of every hand-made run


def trial_row(
    trial_id: str,
    start: float,
    end: float,
    *,
    status: str = "ok",
    workers: int = 1,
    volumes_per_second: float = 2.0,
    val_dice: float | None = 0.5,
) -> dict:
    """A full trials.csv row in the contract format (every column of TRIAL_COLUMNS)."""
    row = dict.fromkeys(TRIAL_COLUMNS, "")
    row.update(
        trial_id=trial_id,
        lr=0.001,
        norm="batch",
        beta_2=0.999,
        amsgrad=False,
        lr_effective=0.001,
        epochs=3,
        batch_size_per_replica=2,
        global_batch_size=2 * workers,
        workers=workers,
        status=status,
        start_time=start,
        end_time=end,
        seconds=end - start,
        volumes_per_second=volumes_per_second if status == "ok" else 0.0,
        val_dice="" if status != "ok" or val_dice is None else val_dice,
        node="vm",
        worker="rank0:pid=1",
        attempts=1,
        error="" if status == "ok" else "boom",
    )
    return row


def write_trials(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_run(
    root: Path,
    mode: str,
    gpus: int,
    makespan: float,
    rows: Sequence[dict] | None = None,
    *,
    resumed: bool = False,
    backend: str = "tensorflow",
    best_val_dice: float | None = 0.5,
    use_gpu: bool = True,
    drop: Sequence[str] = (),
) -> Path:
    """``root/{backend}/{mode}/{gpus}gpu/`` with summary.json and trials.csv as the contract says.

    ``drop`` deletes summary keys, e.g. ``("backend",)`` for a summary from before backends.
    """
    directory = root / backend / mode / f"{gpus}gpu"
    directory.mkdir(parents=True)
    if rows is None:
        workers = gpus if mode == "data" else 1
        rows = [trial_row("t1", START + 1, START + makespan - 1, workers=workers)]
    summary = {
        "backend": backend,
        "mode": mode,
        "gpus": gpus,
        "workers": max(int(r["workers"]) for r in rows),
        "nodes_seen": ["vm"],
        "node_count": 1,
        "makespan_seconds": makespan,
        "makespan_start": START,
        "makespan_end": START + makespan,
        "resumed": resumed,
        "trial_count": len(rows),
        "ok_count": sum(r["status"] == "ok" for r in rows),
        "failed_count": sum(r["status"] == "failed" for r in rows),
        "best": None
        if best_val_dice is None
        else {"trial_id": rows[0]["trial_id"], "hparams": {}, "val_dice": best_val_dice},
        "resources": {"requested": {"cpus": gpus, "gpus": gpus, "use_gpu": use_gpu}},
        "settings": {},
        "devices_seen": [],
        "versions": {},
    }
    for key in drop:
        del summary[key]
    (directory / "summary.json").write_text(json.dumps(summary))
    write_trials(directory / "trials.csv", rows)
    return directory


# --- the speedup table -------------------------------------------------------------------


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
    write_run(tmp_path, "data", 1, 100.0, drop=["backend"])
    table = scaling_table(load_runs(tmp_path))
    assert list(table.columns) == [
        "backend",
        "mode",
        "gpus",
        "base_gpus",
        "makespan_seconds",
        "speedup_vs_1gpu",
        "efficiency_vs_1gpu",
        "trials_ok",
        "trials_failed",
        "mean_trial_seconds",
        "volumes_per_second",
        "best_val_dice",
        "resumed",
        "device",
    ]
    assert table.loc[0, "backend"] == "tensorflow"  # no `backend` key: TensorFlow


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


# --- the timings contract ----------------------------------------------------------------


def test_summary_without_makespan_names_file_and_rule(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0, drop=["makespan_seconds"])
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    message = str(err.value)
    assert str(run / "summary.json") in message
    assert "makespan_seconds" in message and "train_data_parallel" in message


def test_zero_byte_trials_csv(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 10.0)
    (run / "trials.csv").write_bytes(b"")
    with pytest.raises(ContractError, match=r"trials\.csv is empty.*train_experiment_parallel"):
        load_runs(tmp_path)


def test_header_only_trials_csv(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 10.0)
    write_trials(run / "trials.csv", [])
    with pytest.raises(ContractError, match=r"trials\.csv has a header but no trial rows"):
        load_runs(tmp_path)


def test_trials_csv_missing_columns(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    (run / "trials.csv").write_text("trial_id,status\nt1,ok\n")
    with pytest.raises(ContractError, match=r"lacks column\(s\) start_time, end_time"):
        load_runs(tmp_path)


@pytest.mark.parametrize("absent", ["trials.csv", "summary.json"])
def test_folder_with_one_file_only(tmp_path: Path, absent: str):
    run = write_run(tmp_path, "data", 2, 10.0)
    (run / absent).unlink()
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    assert str(run / absent) in str(err.value)
    assert "train_data_parallel" in str(err.value)


def test_explicit_run_dir_without_files(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 1, 10.0)
    for name in ("trials.csv", "summary.json"):
        (run / name).unlink()
    with pytest.raises(ContractError, match=r"summary\.json is missing.*train_experiment"):
        load_runs(directories=[run])


def test_no_runs_at_all(tmp_path: Path):
    (tmp_path / "torch" / "data" / "1gpu").mkdir(parents=True)  # a run that wrote nothing
    with pytest.raises(ContractError, match="no {backend}/{mode}/{G}gpu/summary.json under"):
        load_runs(tmp_path)


def test_runs_in_the_layout_without_backend_folders_are_skipped_with_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    run = write_run(tmp_path / "scratch", "data", 1, 10.0)
    train = tmp_path / "train"
    train.mkdir()
    run.parent.rename(train / "data")  # train/data/1gpu, as before backends had folders
    with caplog.at_level(logging.WARNING), pytest.raises(ContractError, match="no {backend}"):
        load_runs(train)
    assert f"skipping {train / 'data' / '1gpu'}" in caplog.text
    assert f"move it to {train / 'tensorflow' / 'data' / '1gpu'}" in caplog.text


def test_bad_number_names_line(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    rows = [trial_row("t1", START, START + 1), trial_row("t2", START + 1, START + 2)]
    rows[1]["end_time"] = "soon"
    write_trials(run / "trials.csv", rows)
    with pytest.raises(ContractError, match=r"trials\.csv line 3: end_time must be a number"):
        load_runs(tmp_path)


def test_trial_count_mismatch_means_mixed_runs(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    rows = [trial_row("t1", START, START + 1), trial_row("t2", START + 1, START + 2)]
    write_trials(run / "trials.csv", rows)
    with pytest.raises(ContractError, match="counts 1 trials but .* has 2 rows"):
        load_runs(tmp_path)


def test_summary_in_wrong_folder(tmp_path: Path):
    run = write_run(tmp_path, "data", 2, 10.0)
    summary = json.loads((run / "summary.json").read_text())
    summary["gpus"] = 4
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ContractError, match="says gpus=4 but sits in 2gpu/"):
        load_runs(tmp_path)


@pytest.mark.parametrize(
    ("folder", "key", "message"),
    [
        ("torch", "tensorflow", "says backend=tensorflow but sits in torch/"),
        ("tensorflow", "torch", "says backend=torch but sits in tensorflow/"),
        # A torch run always records its backend; without the key a summary is TensorFlow's.
        ("torch", None, "says backend=tensorflow but sits in torch/"),
    ],
)
def test_summary_in_another_backends_folder(tmp_path: Path, folder, key, message):
    run = write_run(tmp_path, "experiment", 1, 10.0, backend=folder)
    summary = json.loads((run / "summary.json").read_text())
    if key is None:
        del summary["backend"]
    else:
        summary["backend"] = key
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ContractError, match=message) as err:
        load_runs(tmp_path)
    assert "train_experiment_parallel" in str(err.value)


def test_resumed_must_be_boolean(tmp_path: Path):
    write_run(tmp_path, "data", 1, 10.0, resumed="yes")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="resumed must be true or false"):
        load_runs(tmp_path)


def test_failed_trial_without_dice_loads(tmp_path: Path):
    rows = [trial_row("t1", START, START + 1, status="failed")]
    run = write_run(tmp_path, "data", 1, 10.0, rows)
    (trial,) = TrialTiming.from_csv(run / "trials.csv", "data")
    assert (trial.ok, trial.val_dice, trial.volumes_trained) == (False, None, 0.0)


# --- timeline lanes ----------------------------------------------------------------------


def test_experiment_lanes_greedy_lowest_free(tmp_path: Path):
    rows = [
        trial_row("a", START + 1, START + 11),  # lane 0
        trial_row("b", START + 2, START + 6),  # lane 1
        trial_row("c", START + 6, START + 9),  # lane 1 again: b ended exactly at c's start
        trial_row("d", START + 7, START + 12),  # 0 and 1 busy: lane 2, beyond G = 2
        trial_row("e", START + 11, START + 13, status="failed"),  # lane 0: a just ended
    ]
    run = Run.from_dir(write_run(tmp_path, "experiment", 2, 14.0, rows))
    bars = timeline_bars(run)
    assert [(b.trial_id, b.lane, b.left, b.width, b.ok) for b in bars] == [
        ("a", 0, 1.0, 10.0, True),
        ("b", 1, 2.0, 4.0, True),
        ("c", 1, 6.0, 3.0, True),
        ("d", 2, 7.0, 5.0, True),
        ("e", 0, 11.0, 2.0, False),
    ]
    assert lane_count(run, bars) == 3  # the oversubscribed lane is drawn, not hidden
    assert busy_fraction(run, bars) == pytest.approx(24.0 / (2 * 14.0))


def test_data_parallel_trial_holds_every_rank(tmp_path: Path):
    rows = [
        trial_row("t2", START + 12, START + 20, workers=2),
        trial_row("t1", START + 5, START + 10, workers=2),
    ]
    run = Run.from_dir(write_run(tmp_path, "data", 2, 22.0, rows))
    assert timeline_bars(run) == [
        Bar("t2", 0, 12.0, 8.0, True),
        Bar("t2", 1, 12.0, 8.0, True),
        Bar("t1", 0, 5.0, 5.0, True),
        Bar("t1", 1, 5.0, 5.0, True),
    ]


def test_idle_gpus_still_get_lanes(tmp_path: Path):
    rows = [trial_row("only", START, START + 5)]
    run = Run.from_dir(write_run(tmp_path, "experiment", 4, 5.0, rows))
    bars = timeline_bars(run)
    assert [b.lane for b in bars] == [0]
    assert lane_count(run, bars) == 4
    assert busy_fraction(run, bars) == pytest.approx(0.25)


def test_assign_lanes_blocks_of_workers():
    def timing(trial_id: str, start: float, end: float, workers: int) -> TrialTiming:
        return TrialTiming(trial_id, "ok", start, end, end - start, 1.0, workers, None)

    lanes = assign_lanes(
        [timing("one", 0, 10, 1), timing("pair", 1, 5, 2), timing("late", 5, 6, 2)]
    )
    assert lanes == {"one": [0], "pair": [1, 2], "late": [1, 2]}


def eval_summary(path: Path, model: str, dice: Sequence[float], **extra) -> Path:
    """A rule evaluate summary.json scoring ``model`` with these per-region mean Dice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    regions = {f"R{i}": {"dice": {"mean": value}} for i, value in enumerate(dice)}
    path.write_text(json.dumps({"model": model, "regions": regions, **extra}))
    return path


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
            tmp_path / "eval/tensorflow/data/summary.json",
            "results/train/tensorflow/data/2gpu/best_model.json",
            [0.9, 0.6],
            backend="tensorflow",
        ),
        # No backend key: the eval folder (and the model's) says torch.
        eval_summary(
            tmp_path / "eval/torch/data/summary.json",
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
        tmp_path / "eval/data/summary.json", "results/train/data/2gpu/best_model.keras", [0.8]
    )
    out = attach_test_dice(dice_table(), [summary])
    assert out["test_dice"].isna().tolist() == [True, False, True, True]  # TensorFlow's


@pytest.mark.parametrize(
    ("where", "model", "key"),
    [
        ("eval/torch/data", "results/train/torch/data/2gpu/best_model.json", "tensorflow"),
        ("eval/torch/data", "results/train/tensorflow/data/2gpu/best_model.json", None),
    ],
)
def test_attach_test_dice_refuses_a_backend_its_folders_contradict(tmp_path, where, model, key):
    extra = {} if key is None else {"backend": key}
    summary = eval_summary(tmp_path / where / "summary.json", model, [0.8], **extra)
    with pytest.raises(ContractError, match=r"summary\.json: backend .* disagrees"):
        attach_test_dice(dice_table(), [summary])
