"""The timings contract: trials.csv + summary.json of a run, each fault naming file and rule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distmis.errors import ContractError
from distmis.scaling.timings import TrialTiming, load_runs
from tests.scaling.helpers import START, trial_row, write_run, write_trials


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
