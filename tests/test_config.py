from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distmis import backends
from distmis.config import load_config, load_schema, validate_config
from distmis.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_fill_everything():
    config = validate_config({})
    assert config["data"]["source"] == "synthetic"
    assert config["data"]["preprocess"]["split"] == {"train": 0.7, "val": 0.15, "test": 0.15}


def _undocumented(schema: dict, path: str = "") -> list[str]:
    """Schema properties lacking a description or a default. Members an object requires are
    described and defaulted by that object (e.g. split.train within split's default)."""
    problems = []
    required = set(schema.get("required", ()))
    covered = "description" in schema and "default" in schema
    for name, sub in (schema.get("properties") or {}).items():
        key = f"{path}{name}"
        if not (covered and name in required):
            problems += [
                f"{key}: no {what}" for what in ("description", "default") if what not in sub
            ]
        problems += _undocumented(sub, f"{key}.")
    return problems


def test_every_schema_key_has_a_description_and_a_default():
    assert _undocumented(load_schema()) == []
    # The check itself can fail:
    assert _undocumented({"properties": {"x": {"type": "integer"}}}) == [
        "x: no description",
        "x: no default",
    ]


def test_shipped_config_is_valid_and_sets_only_schema_keys():
    with open("config.yaml") as fh:
        shipped = yaml.safe_load(fh)
    config = load_config("config.yaml")

    # Validation fills defaults but must not change a value the file sets (`auto` shard
    # counts become the count they stand for).
    def same(given, validated):
        if isinstance(given, dict):
            return all(same(v, validated[k]) for k, v in given.items())
        if given == "auto":
            return isinstance(validated, int)
        return given == validated

    assert same(shipped, config)


def test_schema_backend_names_are_the_backends_package():
    train = load_schema()["properties"]["train"]["properties"]
    for choice in train["backend"]["oneOf"]:
        names = choice.get("enum") or choice["items"]["enum"]
        assert tuple(names) == backends.NAMES


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"data": {"preprocess": {"split": {"train": 0.5, "val": 0.2, "test": 0.2}}}},
            "data.preprocess.split: fractions must sum to 1",
        ),
        ({"data": {"preprocess": {"shape": [32, -4, 8]}}}, "config key data.preprocess.shape.1"),
        ({"data": {"synthetic": {"cases": "many"}}}, "config key data.synthetic.cases"),
        ({"data": {"colour": "blue"}}, "'colour' was unexpected"),
        ({"data": {"source": "kaggle"}}, "config key data.source"),
        ({"data": {"download": {"md5": "xyz"}}}, "config key data.download.md5"),
        ({"report": {"quality_target": 0.95}}, "config key report.quality_target"),
        ({"report": {"quality_target": {}}}, "config key report.quality_target"),
        (
            {"report": {"quality_target": {"fraction_of_best": 1.5}}},
            "config key report.quality_target",
        ),
        ({"report": {"quality_target": {"dice": 0}}}, "config key report.quality_target"),
        (
            {"report": {"quality_target": {"dice": 0.8, "fraction_of_best": 0.9}}},
            "config key report.quality_target",
        ),
    ],
)
def test_invalid_config_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_config(config)


@pytest.mark.parametrize(
    ("shape", "depth", "factor"),
    [([32, 32, 24], 4, 16), ([32, 36, 24], 3, 8), ([6, 8, 8], 2, 4), ([16, 16, 15], 1, 2)],
)
def test_shape_not_divisible_by_the_unet_downsampling_names_both_keys(shape, depth, factor):
    config = {"data": {"preprocess": {"shape": shape}}, "train": {"model": {"depth": depth}}}
    with pytest.raises(ConfigError) as excinfo:
        validate_config(config)
    message = str(excinfo.value)
    assert message.startswith("data.preprocess.shape: ")
    assert "train.model.depth" in message and f"= {factor} (depth {depth})" in message


@pytest.mark.parametrize(
    ("shape", "depth"), [([32, 32, 24], 3), ([16, 16, 16], 3), ([4, 8, 12], 2), ([2, 2, 2], 1)]
)
def test_shape_divisible_by_2_to_the_depth_passes(shape, depth):
    # Each U-Net level max-pools by 2 once: depth levels need 2**depth, not 2**(depth - 1).
    config = {"data": {"preprocess": {"shape": shape}}, "train": {"model": {"depth": depth}}}
    assert validate_config(config)["data"]["preprocess"]["shape"] == shape


def test_resize_defaults_to_null_and_takes_three_sizes():
    assert validate_config({})["data"]["preprocess"]["resize"] is None
    config = validate_config({"data": {"preprocess": {"resize": [40, 40, 30]}}})
    assert config["data"]["preprocess"]["resize"] == [40, 40, 30]
    with pytest.raises(ConfigError, match=r"config key data\.preprocess\.resize"):
        validate_config({"data": {"preprocess": {"resize": [40, 40]}}})
    with pytest.raises(ConfigError, match=r"config key data\.preprocess\.resize\.2"):
        validate_config({"data": {"preprocess": {"resize": [40, 40, 0]}}})


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_reads_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"synthetic": {"cases": 7}}}))
    assert load_config(path)["data"]["synthetic"]["cases"] == 7


def test_quality_target_is_a_fraction_of_best_or_a_dice(tmp_path):
    assert validate_config({})["report"]["quality_target"] == {"fraction_of_best": 0.95}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"report": {"quality_target": {"dice": 0.8}}}))
    assert load_config(path)["report"]["quality_target"] == {"dice": 0.8}
    path.write_text(yaml.safe_dump({"report": {"quality_target": {"fraction_of_best": 2}}}))
    with pytest.raises(ConfigError, match=r"config key report\.quality_target"):
        load_config(path)


def _shards(gpu_counts, modes, shards=None, source="msd") -> dict:
    config = {"train": {"gpu_counts": gpu_counts, "modes": modes}, "data": {"source": source}}
    if shards is not None:
        config["data"]["preprocess"] = {"shards": shards}
    return validate_config(config)["data"]["preprocess"]["shards"]


def test_auto_shards_follow_the_largest_data_parallel_job():
    assert _shards([1, 2, 4, 8, 16, 32], ["data", "experiment"]) == {
        "train": 32,
        "val": 32,
        "test": 1,
    }
    # Experiment mode alone reads whole splits per trial: one shard each is enough.
    assert _shards([1, 4], ["experiment"]) == {"train": 1, "val": 1, "test": 1}
    # Never more shards than the split will have cases (24 synthetic: 17 train, 4 val).
    assert _shards([1, 8], ["data"], source="synthetic") == {"train": 8, "val": 4, "test": 1}


def test_fewer_shards_than_data_parallel_workers_warns_naming_both_keys(caplog):
    with caplog.at_level("WARNING", logger="distmis.config"):
        shards = {"train": 16, "val": 2, "test": 1}
        assert _shards([1, 4], ["data"], shards) == shards
        assert "shards.val is 2, fewer than the 4 data-parallel workers of train.gpu_counts" in (
            caplog.text
        )
        assert "shards.train" not in caplog.text


def test_hybrid_jobs_run_where_k_divides_g():
    from distmis.config import run_folders

    train = validate_config(
        {
            "train": {
                "gpu_counts": [1, 2, 4, 6],
                "modes": ["data", "hybrid"],
                "gpus_per_trial": [2, 4],
            }
        }
    )["train"]
    assert run_folders(train) == {"data": [1, 2, 4, 6], "hybrid2": [2, 4, 6], "hybrid4": [4]}
    # auto shards: as many as the most workers one configuration uses
    assert (
        validate_config(
            {"train": {"gpu_counts": [1, 4], "modes": ["hybrid"], "gpus_per_trial": [2]}}
        )["data"]["preprocess"]["shards"]["train"]
        == 2
    )


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"gpu_counts": [1, 3], "modes": ["hybrid"], "gpus_per_trial": [2]},
            r"train.gpus_per_trial: k = \[2\] divides none of train.gpu_counts \[1, 3\]",
        ),
    ],
)
def test_impossible_mode_combinations_are_named_before_a_job(train, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"train": train})


def test_hybrid_with_asha_is_accepted_by_the_real_cli(tmp_path):
    """ASHA in hybrid mode (its stopped trials end their Train runs) passes the config check
    and the run's own settings check in ``distmis train``: the job gets as far as the data."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    train = {"modes": ["experiment", "hybrid"], "scheduler": "asha"}
    config.write_text(yaml.safe_dump({"train": train}))
    assert validate_config({"train": train})["train"]["scheduler"] == "asha"
    command = [sys.executable, "-m", "distmis.cli", "train", "--mode", "hybrid", "--gpus", "2",
               "--gpus-per-trial", "2", "--data", str(tmp_path / "no-data"),
               "--out", str(tmp_path / "out"), "--config", str(config)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0  # there is no dataset: the check after the config's
    assert "train.scheduler" not in done.stderr, done.stderr[-2000:]
    assert "info.json" in done.stderr, done.stderr[-2000:]


def test_data_mode_with_asha_is_accepted_by_the_real_cli(tmp_path):
    """ASHA in data mode (its workers stop configurations by ASHA's rule, one after another)
    passes the config check and the run's own settings check in ``distmis train``: the job
    gets as far as the data. It was refused before data mode could stop anything."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    train = {"modes": ["data", "experiment"], "scheduler": "asha"}
    config.write_text(yaml.safe_dump({"train": train}))
    assert validate_config({"train": train})["train"]["scheduler"] == "asha"
    command = [sys.executable, "-m", "distmis.cli", "train", "--mode", "data", "--gpus", "2",
               "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"),
               "--config", str(config)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0  # there is no dataset: the check after the config's
    assert "train.scheduler" not in done.stderr, done.stderr[-2000:]
    assert "info.json" in done.stderr, done.stderr[-2000:]


def test_bf16_with_channels_last_is_a_gpu_combination():
    both = {"precision": "bf16", "channels_last_3d": True}
    with pytest.raises(ConfigError, match="bf16 with channels_last_3d is a GPU combination"):
        validate_config({"train": {"backend": "torch", "torch": both}})
    validate_config({"train": {"backend": "torch", "use_gpu": True, "torch": both}})
    validate_config({"train": {"backend": "torch", "torch": {"precision": "bf16"}}})


def test_asha_overlay_is_a_valid_config():
    assert load_config([ROOT / "config.yaml", ROOT / "config.asha.yaml"])["train"]["scheduler"] == (
        "asha"
    )


def test_search_overlay_is_a_valid_config_searching_8_with_tpe_and_asha():
    train = load_config([ROOT / "config.yaml", ROOT / "config.search.yaml"])["train"]
    assert train["search"] == {"algorithm": "tpe", "samples": 8, "seed": 0, "startup_trials": 3}
    assert train["scheduler"] == "asha" and train["search_space"]["lr"] == {
        "loguniform": [0.001, 0.01]
    }
    # Merged key by key, as snakemake --configfile merges: config.yaml's model stays.
    assert train["model"] == load_config(ROOT / "config.yaml")["train"]["model"]


def test_later_config_files_overlay_earlier_ones_key_by_key(tmp_path):
    base, update = tmp_path / "base.yaml", tmp_path / "update.yaml"
    base.write_text(yaml.safe_dump({"train": {"epochs": 2, "asha": {"grace_period": 2}}}))
    update.write_text(
        yaml.safe_dump({"train": {"asha": {"reduction_factor": 3}, "modes": ["data"]}})
    )
    train = load_config([base, update])["train"]
    assert (train["epochs"], train["modes"]) == (2, ["data"])
    assert train["asha"] == {"grace_period": 2, "reduction_factor": 3}
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config([base, tmp_path / "nope.yaml"])
