from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

import distmis
from distmis.config import validate_config
from distmis.errors import ConfigError
from distmis.hparams import HParams, expand_grid
from distmis.train.settings import TrainSettings
from distmis.trial import WorkerSettings


def settings(tmp_path: Path, **train) -> TrainSettings:
    config = validate_config({"train": train})
    return TrainSettings.from_config(
        config["train"], mode="data", gpus=4, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )


def test_paper_grid_has_32_configurations_in_fixed_order(tmp_path):
    grid = settings(tmp_path).configurations()
    assert len(grid) == 32
    assert grid[0].hparams == HParams(lr=1e-4, norm="batch", beta_2=0.99, amsgrad=True)
    assert grid[-1].hparams == HParams(lr=5e-3, norm="group", beta_2=0.999, amsgrad=False)
    # The grid's trial ids are its values, as ever, and its numbers the table order.
    assert [p.trial_id for p in grid] == [p.hparams.trial_id for p in grid]
    assert [p.number for p in grid] == list(range(32))
    assert len({hp.trial_id for hp in grid}) == 32
    assert grid[0].trial_id == "lr=0.0001_norm=batch_beta2=0.99_amsgrad=1"


def test_expand_grid_needs_every_hyperparameter():
    with pytest.raises(ValueError, match="lacks"):
        expand_grid({"lr": [0.1]})


def test_linear_lr_scaling_only_in_data_mode_when_switched_on(tmp_path):
    hp = HParams(lr=1e-3, norm="batch", beta_2=0.99, amsgrad=False)
    assert settings(tmp_path).lr_effective(hp) == 1e-3
    scaled = settings(tmp_path, scale_lr=True)
    assert scaled.lr_effective(hp) == pytest.approx(4e-3)
    assert replace(scaled, mode="experiment").lr_effective(hp) == 1e-3


def test_seed_config_maps_original_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"num_replicas": 2, "batch_size_per_replica": 3, "num_epochs": 7, "debug": True})
    )
    s = settings(tmp_path).with_seed_config(path)
    assert (s.gpus, s.batch_size_per_replica, s.epochs, s.debug) == (2, 3, 7, True)
    path.write_text(json.dumps({"num_epoch": 7}))
    with pytest.raises(ConfigError, match="unknown key.*num_epoch"):
        settings(tmp_path).with_seed_config(path)


def test_seed_config_maps_the_original_pytorch_keys(tmp_path):
    path = tmp_path / "torch.json"
    path.write_text(
        json.dumps(
            {
                "lr": 0.002,
                "epochs": 5,
                "verbose": 1,
                "nodes": 2,
                "gpus": 4,
                "batch_size": 3,
                "num_workers": 8,
                "use_gpu": True,
            }
        )
    )
    s = settings(tmp_path, backend="torch").with_seed_config(path)
    assert (s.gpus, s.epochs, s.batch_size_per_replica, s.use_gpu, s.debug) == (8, 5, 3, True, True)
    # One lr replaces the grid's lr axis; the other axes stay.
    assert {p.hparams.lr for p in s.configurations()} == {0.002}
    assert len(s.configurations()) == 8


def test_seed_config_derives_and_checks_the_worker_count(tmp_path):
    path = tmp_path / "torch.json"
    path.write_text(json.dumps({"nodes": 3, "gpus": 2}))
    assert settings(tmp_path).with_seed_config(path).gpus == 6
    path.write_text(json.dumps({"nodes": 2, "gpus": 4, "num_workers": 6}))
    with pytest.raises(ConfigError, match="num_workers 6 != nodes 2 × gpus 4"):
        settings(tmp_path).with_seed_config(path)
    path.write_text(json.dumps({"num_replicas": 2, "num_workers": 4}))
    with pytest.raises(ConfigError, match="disagrees"):
        settings(tmp_path).with_seed_config(path)
    path.write_text(json.dumps({"batch_size": 0}))
    with pytest.raises(ConfigError, match="batch_size_per_replica must be an integer >= 1"):
        settings(tmp_path).with_seed_config(path)


def test_backend_is_chosen_from_the_config(tmp_path):
    assert settings(tmp_path).backend == "tensorflow"
    torch_settings = settings(
        tmp_path,
        backend="torch",
        use_gpu=True,
        torch={"precision": "bf16", "channels_last_3d": True},
    )
    assert torch_settings.backend == "torch"
    assert torch_settings.backend_options["precision"] == "bf16"
    assert torch_settings.worker_settings().backend_options["channels_last_3d"] is True
    config = validate_config(
        {"train": {"backend": ["tensorflow", "torch"], "torch": {"precision": "bf16"}}}
    )
    with pytest.raises(ConfigError, match="choose one"):
        TrainSettings.from_config(
            config["train"], mode="data", gpus=1, tfrecord_dir=tmp_path, out_dir=tmp_path
        )
    picked = {
        backend: TrainSettings.from_config(
            config["train"],
            mode="data",
            gpus=1,
            tfrecord_dir=tmp_path,
            out_dir=tmp_path,
            backend=backend,
        )
        for backend in ("tensorflow", "torch")
    }
    # The torch switches reach only torch; TensorFlow takes none (it trains in fp32).
    assert picked["torch"].backend_options["precision"] == "bf16"
    assert picked["tensorflow"].backend_options == {}
    with pytest.raises(ConfigError, match=r"backend tensorflow takes no options.*precision"):
        replace(picked["tensorflow"], backend_options={"precision": "bf16"})


def test_fp16_needs_gpus_and_unknown_backends_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs train.use_gpu"):
        validate_config({"train": {"backend": "torch", "torch": {"precision": "fp16"}}})
    assert validate_config(
        {"train": {"backend": "torch", "use_gpu": True, "torch": {"precision": "fp16"}}}
    )
    with pytest.raises(ConfigError, match="train.backend"):
        validate_config({"train": {"backend": "jax"}})


def test_the_backend_checks_its_options_for_the_run_too(tmp_path):
    # The config allowed fp16 on GPUs; a seed config that turns the GPUs off meets the same
    # rule, stated once, in the torch backend.
    fp16 = settings(tmp_path, backend="torch", use_gpu=True, torch={"precision": "fp16"})
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"use_gpu": False}))
    with pytest.raises(ConfigError, match="train.torch.precision: fp16 needs train.use_gpu"):
        fp16.with_seed_config(path)
    with pytest.raises(ConfigError, match=r"train.torch.precision must be one of"):
        replace(fp16, backend_options={**fp16.backend_options, "precision": "fp8"})
    with pytest.raises(ConfigError, match=r"train.torch: unknown option\(s\) \['precison'\]"):
        replace(fp16, backend_options={"precison": "fp16"})


def test_every_setting_without_a_default_comes_from_the_config_or_the_run(tmp_path):
    run = settings(tmp_path, epochs=3, model={"depth": 2}, asha={"grace_period": 2})
    assert (run.epochs, run.depth, run.asha_grace_period) == (3, 2, 2)
    assert (run.mode, run.gpus, run.out_dir) == ("data", 4, tmp_path / "out")
    assert (run.runner, run.cache_scope, run.fail_trials) == ("ray", None, ())


def test_worker_settings_cross_to_workers_whole_and_refuse_drift(tmp_path):
    for backend in ("tensorflow", "torch"):
        worker = settings(tmp_path, backend=backend).worker_settings()
        payload = json.loads(json.dumps(worker.to_dict()))  # what Ray carries: JSON-able
        assert WorkerSettings.from_dict(payload) == worker
    with pytest.raises(KeyError, match=r"missing \['seed'\], unknown \['sede'\]"):
        WorkerSettings.from_dict({**{k: v for k, v in payload.items() if k != "seed"}, "sede": 0})
    # A run's settings are its worker settings plus the driver's: the payload is that part,
    # whole, and nothing of the driver's.
    run = settings(tmp_path, backend="torch")
    assert set(run.to_dict()) == {f.name for f in fields(WorkerSettings)}
    assert type(run.worker_settings()) is WorkerSettings
    assert Path(run.to_dict()["out_dir"]).is_absolute()


def _attributes_read(path: Path, owner: str) -> set[str]:
    """Names ``x`` of every ``<owner>.x`` / ``self.<owner>.x`` read in the module at ``path``."""
    reads = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
            if name == owner:
                reads.add(node.attr)
    return reads


def test_every_worker_setting_is_read_by_the_skeleton_or_a_backend_loop():
    # A setting nobody reads is a switch that silently does nothing.
    src = Path(distmis.__file__).parent
    loops = [src / "trial.py", src / "worker_group.py", *sorted(src.glob("backends/*/loop.py"))]
    assert len(loops) == 4
    read = set().union(*(_attributes_read(path, "settings") for path in loops))
    assert {f.name for f in fields(WorkerSettings)} - read == set()


def test_torch_loader_workers_default_to_the_cores_beyond_the_training_one(tmp_path):
    def loader_workers(**train) -> int:
        return settings(tmp_path, backend="torch", **train).backend_options["loader_workers"]

    assert loader_workers(cpus_per_worker=1) == 0
    assert loader_workers(cpus_per_worker=8) == 7
    assert loader_workers(cpus_per_worker=8, torch={"loader_workers": 2}) == 2


def test_input_settings_reach_the_workers(tmp_path):
    run = settings(tmp_path, shuffle_buffer=3, cache_dir="/scratch/x")
    worker = dataclasses.replace(run, cache_scope="/dev/shm/scope").worker_settings()
    assert (worker.shuffle_buffer, worker.cache_scope) == (3, "/dev/shm/scope")
    assert WorkerSettings.from_dict(worker.to_dict()) == worker


def test_the_search_is_read_from_the_config_and_random_search_is_a_seeded_list(tmp_path):
    from distmis.search import SearchSettings

    assert settings(tmp_path).search == SearchSettings("grid", None, 0, 10)
    sampled = settings(tmp_path, seed=4, search={"algorithm": "random", "samples": 3})
    assert sampled.search == SearchSettings("random", 3, 4, 10)
    assert sampled.to_json()["search"] == {
        "algorithm": "random",
        "samples": 3,
        "seed": 4,
        "startup_trials": 10,
    }
    # Drawn up front: the same seed, the same list; recorded where the run folder is given.
    first = sampled.configurations(tmp_path / "run")
    assert [p.number for p in first] == [0, 1, 2]
    assert all(p.trial_id.startswith(f"s{p.number:03d}_") for p in first)
    assert (
        settings(tmp_path, seed=4, search={"algorithm": "random", "samples": 3}).configurations()
        == first
    )
    assert sampled.configurations(tmp_path / "run") == first  # replayed from its record
    assert len((tmp_path / "run" / "search.jsonl").read_text().splitlines()) == 3
    assert (
        settings(tmp_path, seed=5, search={"algorithm": "random", "samples": 3}).configurations()
        != first
    )
    # TPE proposes as results arrive: data mode's worker group asks it (rank 0), the local
    # runner asks it, and in experiment and hybrid mode Ray Tune's searcher does.
    tpe = settings(tmp_path, search={"algorithm": "tpe", "samples": 3, "startup_trials": 1})
    assert not tpe.tune_proposes
    # Experiment and hybrid mode: Ray Tune's searcher proposes (distmis.train.tune_search).
    for mode in ("experiment", "hybrid"):
        under_tune = replace(tpe, mode=mode, gpus_per_trial=2 if mode == "hybrid" else 1)
        assert under_tune.tune_proposes
    assert not replace(tpe, mode="experiment", gpus=1, runner="local").tune_proposes
    with pytest.raises(ValueError, match="TPE proposes as results arrive"):
        tpe.configurations()
