"""The run folder's contract (:mod:`distmis.run_folder`): every file round-trips through it, a
file of another format is refused in one line naming it and its rule, and no other module of
``distmis`` opens a run's files itself."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

import distmis
from distmis import run_folder
from distmis.errors import ContractError
from distmis.hparams import HParams
from distmis.run_folder import (
    BestTrial,
    CheckpointState,
    EpochRecord,
    FailedAttempt,
    ModelCard,
    RequestedResources,
    Resources,
    RunSearch,
    RunState,
    RunSummary,
    TrialResult,
    WorkerDevice,
    WorkerInfo,
)
from tests.run_files import trial_record, write_card

SRC = Path(distmis.__file__).parent
RULE = "train_hybrid_parallel"  # the rule of the run folders below (hybrid2)
ALL_RULES = "train_data_parallel / train_experiment_parallel / train_hybrid_parallel"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "train" / "torch" / "hybrid2" / "4gpu"
    folder.mkdir(parents=True)
    return folder


def summary() -> RunSummary:
    return RunSummary(
        backend="torch",
        mode="hybrid",
        runner="ray",
        gpus_per_trial=2,
        scheduler="none",
        search=RunSearch("grid", None, 0),
        startup_seconds=3.5,
        gpus=4,
        workers=2,
        nodes_seen=("n1", "n2"),
        node_count=2,
        makespan_seconds=100.0,
        makespan_start=1000.0,
        makespan_end=1100.0,
        resumed=False,
        trial_count=2,
        ok_count=1,
        failed_count=1,
        stopped_count=0,
        best=BestTrial(
            "t0", {"lr": 0.001, "norm": "batch", "beta_2": 0.999, "amsgrad": False}, 0.6
        ),
        resources=Resources(
            requested=RequestedResources(cpus=8, gpus=4, cpus_per_worker=2, use_gpu=True),
            ray_cluster={"CPU": 8.0, "GPU": 4.0},
            cpus_visible_to_job=8,
            slurm={"SLURM_JOB_ID": "42"},
        ),
        settings={"epochs": 2, "batch_size_per_replica": 2, "tfrecord_dir": "results/tfrecords"},
        devices_seen=("GPU:0",),
        worker_devices=(WorkerDevice("n1", "gpu", "H100"), WorkerDevice("n2", "gpu", "H100")),
        versions={"python": "3.11", "torch": "2.5"},
        train_volumes=8,
        val_volumes=2,
    )


RESULT = TrialResult(
    trial_id="t0",
    backend="torch",
    start_time=10.0,
    fit_start_time=11.5,
    end_time=20.0,
    fit_seconds=8.0,
    startup_seconds=1.5,
    volumes_trained=16,
    epochs=2,
    resumed_from_epoch=0,
    metrics={"loss": 0.4, "dice": 0.5, "val_loss": 0.3, "val_dice": 0.6},
    history=({"loss": 0.5, "val_dice": 0.4}, {"loss": 0.4, "val_dice": 0.6}),
    devices=("CPU:x86_64",),
)
WORKER = WorkerInfo(
    backend="torch",
    frameworks_loaded=("torch",),
    rank=1,
    world_size=2,
    host="n1",
    pid=123,
    gpu_ids=("0", "1"),
    batch_size_per_replica=2,
    global_batch_size=4,
    steps_per_epoch=2,
    devices=("GPU:0",),
    device_type="gpu",
    device_name="H100",
    train_volumes_read=None,
)
EPOCH = EpochRecord(
    epoch=1,
    time=15.0,
    started=12.0,
    train_seconds=2.5,
    val_seconds=0.5,
    metrics={"loss": 0.5, "dice": 0.4, "val_loss": 0.45, "val_dice": 0.4, "val_dice_WT": 0.4},
)


def json_files(run: Path) -> list[tuple[object, Path]]:
    """One of every JSON contract object and the file it lives in."""
    trial = run_folder.trial_folder(run, "t0")
    return [
        (summary(), run / run_folder.SUMMARY_FILE),
        (RunState("abc", complete=False, started=999.5), run / run_folder.RUN_STATE_FILE),
        (trial_record("t0"), trial / run_folder.RECORD_FILE),
        (RESULT, trial / run_folder.RESULT_FILE),
        (WORKER, run_folder.worker_path(trial, 1)),
        (FailedAttempt(10.0, 12.0, "RuntimeError: boom"), trial / run_folder.FAILED_FILE),
        (CheckpointState(epoch=2, trial_id="t0"), run / "ray" / "ckpt" / "state.json"),
    ]


# --- (a) every file round-trips -----------------------------------------------------------


def test_every_json_file_round_trips_with_its_format(run: Path):
    for written, path in json_files(run):
        written.write(path)
        payload = json.loads(path.read_text())
        assert payload["format"] == type(written).FORMAT
        assert re.fullmatch(r"distmis-[a-z-]+/\d+", payload["format"])
        assert type(written).read(path) == written, path


def test_the_model_card_round_trips_with_its_trial_row(run: Path):
    path = write_card(run, trial_id="t7")
    card = ModelCard.read(path)
    assert card.trial == trial_record("t7") and card.model_path(path) == run / "best_model.pt"
    payload = json.loads(path.read_text())
    # The trial row sits inside the card without a format of its own.
    assert payload["format"] == ModelCard.FORMAT and "format" not in payload["trial"]


def test_trials_csv_round_trips_sorted_with_empty_cells_for_none(run: Path):
    records = [
        trial_record("t1"),
        trial_record(
            "t0",
            status="failed",
            train_loss=None,
            train_dice=None,
            val_loss=None,
            val_dice=None,
            error="RuntimeError: boom, badly",
            epochs_run=0,
            startup_seconds=None,
            hparams=HParams(lr=1e-3, norm="batch", beta_2=0.999, amsgrad=True),
        ),
    ]
    path = run / run_folder.TRIALS_FILE
    run_folder.write_trials(path, records)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(run_folder.TRIAL_COLUMNS)
    assert all(line.startswith("distmis-trial-record/2,") for line in lines[1:])
    assert run_folder.read_trials(path) == sorted(records, key=lambda r: r.trial_id)


def test_epochs_and_attempts_logs_append_and_read_back(run: Path):
    trial = run_folder.trial_folder(run, "t0")
    assert run_folder.read_epochs(trial) == [] and run_folder.read_attempts(trial) == ()
    run_folder.log_attempt(trial, 100.25)
    second = dataclasses.replace(EPOCH, epoch=2, time=25.0, started=22.0)
    for record in (EPOCH, second):
        run_folder.append_epoch(trial, record)
    run_folder.log_attempt(trial, 200.5)
    assert run_folder.read_epochs(trial) == [EPOCH, second]
    assert run_folder.read_attempts(trial) == (100.25, 200.5)
    # Every epochs line carries its format; the attempts log one line covering the rest.
    lines = (trial / run_folder.EPOCHS_FILE).read_text().splitlines()
    assert [json.loads(line)["format"] for line in lines] == [EpochRecord.FORMAT] * 2
    assert json.loads(lines[0])["val_dice_WT"] == 0.4  # metrics sit beside the timing
    log = (trial / run_folder.ATTEMPTS_FILE).read_text()
    assert log == "# distmis-trial-attempts/1\n100.25\n200.5\n"


def test_workers_are_read_by_rank(run: Path):
    trial = run_folder.trial_folder(run, "t0")
    for rank in (1, 0):
        dataclasses.replace(WORKER, rank=rank).write(run_folder.worker_path(trial, rank))
    assert [w.rank for w in run_folder.read_workers(trial)] == [0, 1]


# --- (b) another format is refused in one line naming the file and the rule ---------------


@pytest.mark.parametrize("version", [None, "distmis-old/0"])
def test_a_json_file_of_another_format_is_refused_in_one_line(run: Path, version):
    for written, path in json_files(run):
        payload = written.to_json()
        if version is None:
            del payload["format"]  # as every file before the formats was written
        else:
            payload["format"] = version
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
        with pytest.raises(ContractError) as err:
            type(written).read(path)
        expected = type(written).FORMAT
        what = (
            f"no format: written before {expected} (an older DistMIS)"
            if version is None
            else f"format {version!r}, expected {expected!r}"
        )
        assert str(err.value) == f"{path}: {what}; rerun {RULE}"


def test_outside_a_run_folder_the_message_names_every_training_rule(tmp_path: Path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"trial_id": "t0"}))
    with pytest.raises(ContractError) as err:
        TrialResult.read(path)
    assert str(err.value).endswith(f"; rerun {ALL_RULES}")


def test_a_missing_key_is_refused_never_defaulted(run: Path):
    path = run_folder.trial_folder(run, "t0") / run_folder.RESULT_FILE
    payload = RESULT.to_json()
    del payload["startup_seconds"]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**payload, "colour": "red"}))
    with pytest.raises(ContractError) as err:
        TrialResult.read(path)
    assert str(err.value) == (
        f"{path}: missing ['startup_seconds'], unknown ['colour']; rerun {RULE}"
    )
    path.write_text(json.dumps({**RESULT.to_json(), "epochs": "2"}))
    with pytest.raises(ContractError, match="epochs must be int, got '2'"):
        TrialResult.read(path)


def test_an_optional_field_is_an_explicit_null(run: Path):
    path = run / run_folder.SUMMARY_FILE
    written = dataclasses.replace(summary(), best=None)
    written.write(path)
    assert json.loads(path.read_text())["best"] is None
    assert RunSummary.read(path).best is None


def test_trials_csv_and_the_logs_of_another_format_are_refused(run: Path):
    path = run / run_folder.TRIALS_FILE
    run_folder.write_trials(path, [trial_record("t0")])
    # Before the format column: every other column, as earlier runs wrote them.
    path.write_text("\n".join(line.partition(",")[2] for line in path.read_text().splitlines()))
    with pytest.raises(ContractError) as err:
        run_folder.read_trials(path)
    assert str(err.value) == (
        f"{path}: no format column: written before distmis-trial-record/2 (an older DistMIS); "
        f"rerun {RULE}"
    )
    run_folder.write_trials(path, [trial_record("t0")])
    path.write_text(path.read_text().replace("distmis-trial-record/2", "distmis-trial-record/9"))
    with pytest.raises(ContractError) as err:
        run_folder.read_trials(path)
    assert str(err.value) == (
        f"{path} line 2: format 'distmis-trial-record/9', expected 'distmis-trial-record/2'; "
        f"rerun {RULE}"
    )
    trial = run_folder.trial_folder(run, "t0")
    trial.mkdir(parents=True)
    epochs = trial / run_folder.EPOCHS_FILE
    epochs.write_text(json.dumps({k: v for k, v in EPOCH.to_json().items() if k != "format"}))
    with pytest.raises(ContractError) as err:
        run_folder.read_epochs(trial)
    assert str(err.value) == (
        f"{epochs} line 1: no format: written before distmis-trial-epoch/1 (an older DistMIS); "
        f"rerun {RULE}"
    )
    attempts = trial / run_folder.ATTEMPTS_FILE
    attempts.write_text("100.0\n")  # as attempts.log was written before its format line
    with pytest.raises(ContractError) as err:
        run_folder.read_attempts(trial)
    assert str(err.value) == (
        f"{attempts}: no '# distmis-trial-attempts/1' line: written before "
        f"distmis-trial-attempts/1 (an older DistMIS); rerun {RULE}"
    )


def test_a_run_state_of_another_format_starts_the_run_afresh(tmp_path: Path):
    """The training rule reads its own state: an older one is never resumed from (its trials'
    files are of an older format too), so the run starts afresh instead of failing."""
    from distmis.train.run import _prepare_state

    out = tmp_path / "run"
    (out / "trials" / "t0").mkdir(parents=True)
    (out / run_folder.RUN_STATE_FILE).write_text(
        json.dumps({"fingerprint": "f", "complete": False, "started": 1.0})
    )
    settings = type("Settings", (), {"out_dir": out})()
    assert _prepare_state(settings, "f") is False  # not resumed
    assert not (out / "trials").exists()
    assert RunState.read(out / run_folder.RUN_STATE_FILE).fingerprint == "f"
    assert _prepare_state(settings, "f") is True  # now a state of this format: resumed


# --- (c) no other module opens a run's files ---------------------------------------------

# What a run folder holds, by name (calibration.json: each run's, before the planner measured
# runs itself) and the run_folder/trial constants that name them.
RUN_FILES = re.compile(
    r"(^|/)(summary\.json|trials\.csv|best_model\.json|run_state\.json|record\.json|result\.json"
    r"|epochs\.jsonl|failed\.json|attempts\.log|state\.json|calibration\.json|rank0\.json)$"
)
RUN_FILE_PIECES = re.compile(r"^rank\*\.json$")  # f"rank{rank}.json"
# Opening or parsing a file by hand (a call of one of these, or of a module's own function
# that makes one).
RAW_ATTRIBUTES = {
    "read_text",
    "write_text",
    "read_bytes",
    "write_bytes",
    "open",
    "read_csv",
    "DictReader",
    "DictWriter",
}
RAW_MODULE_CALLS = {("json", "load"), ("json", "loads"), ("json", "dump"), ("csv", "reader")}
RAW_CALLS = {"open", "read_json", "write_json", "atomic_path"}
# Other stages' files that share a name with a run's, each with why it is not a run's file.
ALLOWED = {
    ("evaluate/run.py", "summary.json"): "rule evaluate's own summary (results/evaluate/...)",
    ("workflow.py", "summary.json"): "rule evaluate's outputs, checked by name (results/evaluate)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    found = set()
    for node in ast.walk(tree):
        first = node.body[0] if isinstance(node, nodes) and node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            found.add(id(first.value))
    return found


def _names_a_run_file(node: ast.AST, docstrings: set[int], file_names: set[str]) -> str | None:
    """What in ``node`` names a run's file: a literal, an f-string or a constant."""
    for child in ast.walk(node):
        if isinstance(child, ast.JoinedStr):
            pieces = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in child.values)
            if RUN_FILE_PIECES.match(pieces) or RUN_FILES.search(pieces):
                return pieces
        elif isinstance(child, ast.Constant) and isinstance(child.value, str):
            if id(child) not in docstrings and RUN_FILES.search(child.value):
                return child.value
        elif isinstance(child, ast.Name) and child.id in file_names:
            return child.id
        elif isinstance(child, ast.Attribute) and child.attr in file_names:
            return child.attr
    return None


def _calls(node: ast.AST) -> set[str]:
    """Every function name ``node`` calls, and ``raw`` if one of them opens or parses a file."""
    called = set()
    for child in ast.walk(node):
        if not isinstance(child, ast.Call):
            continue
        func = child.func
        if isinstance(func, ast.Name):
            called.add(func.id)
            if func.id in RAW_CALLS:
                called.add("raw")
        elif isinstance(func, ast.Attribute):
            called.add(func.attr)
            module = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr in RAW_ATTRIBUTES or (module, func.attr) in RAW_MODULE_CALLS:
                called.add("raw")
    return called


def raw_run_file_access(source: str) -> list[str]:
    """The functions of a module (``<module>`` for its top level) that name a run's file and
    open or parse a file by hand, directly or through another function of the module."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    # Constants naming a run's file: run_folder's and trial's *_FILE, and the module's own
    # names bound to a run file's literal (SUMMARY_NAME = "summary.json").
    file_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module in ("distmis.run_folder", "distmis.trial")
        for alias in node.names
        if alias.name.endswith("_FILE")
    } | {name for name in dir(run_folder) if name.endswith("_FILE")}
    for node in tree.body:
        if isinstance(node, ast.Assign) and _names_a_run_file(node.value, docstrings, file_names):
            file_names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    functions = {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    calls = {name: _calls(node) for name, node in functions.items()}
    raw = {name for name, called in calls.items() if "raw" in called}
    while True:  # functions that reach a raw call through the module's own functions
        more = {name for name, called in calls.items() if called & raw} - raw
        if not more:
            break
        raw |= more
    top = ast.Module(
        body=[n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)],
        type_ignores=[],
    )
    found = []
    for name, node in [*functions.items(), ("<module>", top)]:
        called = _calls(node) if name == "<module>" else calls[name]
        if not (called & (raw | {"raw"})):
            continue
        names = _names_a_run_file(node, docstrings, file_names)
        if names:
            found.append(f"{name}: {names}")
    return found


def test_no_module_but_the_contract_opens_a_run_file():
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        if module in ("run_folder.py", "fileio.py"):
            continue
        found = [
            f
            for f in raw_run_file_access(path.read_text())
            if (module, f.rpartition(": ")[2]) not in ALLOWED
        ]
        if found:
            offenders[module] = found
    assert offenders == {}, "read or write these through distmis.run_folder"


# Excerpts of the code before the contract (issue 26), verbatim: the check must catch each.
BEFORE = {
    "plan/runs.py": """
def _read_trials(run_dir: Path, epochs: int, made_by: str) -> list[MeasuredTrial]:
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {made_by})")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows


def _trial(run_dir: Path, row: dict[str, str], epochs: int, made_by: str) -> MeasuredTrial:
    directory = run_dir / "trials" / row["trial_id"]
    ok = row["status"] == STATUS_OK
    result = _read_json(directory / "result.json", made_by) if ok else None
    rank0 = _read_json(directory / "workers" / "rank0.json", made_by) if ok else None


def _read_json(path: Path, made_by: str) -> dict[str, Any]:
    return json.loads(path.read_text())
""",
    "scaling/quality.py": """
EPOCHS_NAME = "epochs.jsonl"

def read_validations(path, trial_id, origin, rule):
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = json.loads(line)

def run_validations(run):
    files = [(t.trial_id, run.directory / TRIALS_DIR / t.trial_id / EPOCHS_NAME) for t in run.trials]
    return [v for trial_id, path in files for v in read_validations(path, trial_id, 0, "")]
""",
    "train/run.py": """
STATE_FILE = "run_state.json"

def _prepare_state(settings, fingerprint):
    state_path = settings.out_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
""",
    "trial.py": """
from distmis.fileio import write_json

def write_worker_file(trial, runner, steps):
    workers_dir = trial.directory / "workers"
    write_json(workers_dir / f"rank{runner.rank}.json", payload)

def _append_epoch(trial, epoch, metrics, timing):
    line = json.dumps({"epoch": epoch, **timing.fields(), **metrics})
    with (trial.directory / EPOCHS_FILE).open("a") as fh:
        fh.write(line + "\\n")
""",
    "train/summary.py": """
MODEL_CARD = "best_model.json"

def save_best_model(settings, records):
    write_json(settings.out_dir / MODEL_CARD, payload)
""",
}


@pytest.mark.parametrize("module", sorted(BEFORE))
def test_the_check_catches_the_code_before_the_contract(module: str):
    assert raw_run_file_access(BEFORE[module]), module


def test_the_check_leaves_other_files_and_the_contracts_callers_alone():
    plan_csv = """
PLAN_CSV = "plan.csv"

def find_runs(results_dir):
    return [s.parent for s in Path(results_dir).glob(f"*/*/*gpu/{SUMMARY_FILE}")]

def run_plan(out_dir):
    with atomic_path(out_dir / PLAN_CSV) as tmp, tmp.open("w", newline="") as fh:
        csv.DictWriter(fh, fieldnames=COLUMNS).writeheader()
"""
    reader = '''
def read_run(run_dir):
    """Reads ``summary.json`` and ``trials.csv``."""
    summary = RunSummary.read(run_dir / SUMMARY_FILE)
    return summary, read_trials(run_dir / TRIALS_FILE)
'''
    assert raw_run_file_access(plan_csv) == [] and raw_run_file_access(reader) == []


def test_the_search_record_round_trips_and_drops_only_a_torn_last_line(tmp_path: Path):
    from distmis.run_folder import (
        SEARCH_FILE,
        SearchEvent,
        append_search_event,
        read_search_events,
    )

    assert read_search_events(tmp_path) == []
    events = [
        SearchEvent.ask(0, {"lr": 0.001, "norm": "batch", "beta_2": 0.9, "amsgrad": True}, 10.0),
        SearchEvent.tell(0, 0.25, "COMPLETE", {1: 0.1, 2: 0.25}),
        SearchEvent.ask(1, {"lr": 0.002, "norm": "group", "beta_2": 0.9, "amsgrad": False}, 12.5),
    ]
    for event in events:
        append_search_event(tmp_path, event)
    assert read_search_events(tmp_path) == events
    line = (tmp_path / SEARCH_FILE).read_text().splitlines()[1]
    assert json.loads(line)["format"] == "distmis-search-proposal/1"
    with (tmp_path / SEARCH_FILE).open("a") as fh:
        fh.write('{"format": "distmis-search-proposal/1", "event": "te')  # killed mid-write
    assert read_search_events(tmp_path) == events
    (tmp_path / SEARCH_FILE).write_text('{"format": "distmis-search-proposal/0"}\n')
    with pytest.raises(ContractError, match="format 'distmis-search-proposal/0'"):
        read_search_events(tmp_path)
    with pytest.raises(ValueError, match="state must be one of"):
        SearchEvent.tell(0, 0.1, "DONE")
