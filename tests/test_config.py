from __future__ import annotations

import pytest
import yaml

from distmis.config import load_config, validate_config
from distmis.errors import ConfigError


def test_defaults_fill_everything():
    config = validate_config({})
    assert config["data"]["source"] == "synthetic"
    assert config["data"]["preprocess"]["split"] == {"train": 0.7, "val": 0.15, "test": 0.15}


def test_shipped_config_is_valid():
    config = load_config("config.yaml")
    assert config["data"]["preprocess"]["shape"] == [32, 32, 24]


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
    ],
)
def test_invalid_config_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_config(config)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_reads_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"synthetic": {"cases": 7}}}))
    assert load_config(path)["data"]["synthetic"]["cases"] == 7
