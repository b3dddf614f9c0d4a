"""Model paths and cards → model file, backend, trial: on real files, with no framework loaded."""

from __future__ import annotations

import json

import pytest

from distmis import backends
from distmis.errors import ContractError
from distmis.evaluate.model import TrainedModel, resolve_model
from tests.run_files import write_card

RULES = "train_data_parallel / train_experiment_parallel / train_hybrid_parallel"


def _card(folder, **content):
    """A card whose content is given by hand (a broken one)."""
    path = folder / "best_model.json"
    path.write_text(json.dumps(content))
    return path


def test_card_names_the_model_file_beside_it_and_its_trial(tmp_path):
    card = write_card(tmp_path, backend="torch", model_file="best_model.pt", trial_id="t042")
    assert resolve_model(card) == TrainedModel(
        tmp_path / "best_model.pt", backends.get("torch"), card, "t042"
    )


def test_model_file_finds_its_card_by_stem(tmp_path):
    card = write_card(
        tmp_path, backend="tensorflow", model_file="best_model.keras", trial_id="t007"
    )
    model = resolve_model(tmp_path / "best_model.keras")
    assert model == TrainedModel(
        tmp_path / "best_model.keras", backends.get("tensorflow"), card, "t007"
    )
    # Another stem has no card: no trial.
    assert resolve_model(tmp_path / "twin.pt") == TrainedModel(
        tmp_path / "twin.pt", backends.get("torch"), None, None
    )


def test_other_suffix_is_rejected_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"must be a \.keras or \.pt file or a \.json model card"):
        resolve_model(tmp_path / "model.h5")


def test_card_whose_backend_does_not_fit_its_file(tmp_path):
    card = write_card(tmp_path, backend="torch", model_file="best_model.keras")
    with pytest.raises(
        ContractError,
        match=r"backend 'torch' does not fit model_file 'best_model\.keras' "
        r"\(\.keras is tensorflow, \.pt is torch\); rerun train_data_parallel",
    ):
        resolve_model(card)
    write_card(tmp_path, backend="jax", model_file="best_model.pt")
    with pytest.raises(ContractError, match="backend 'jax' does not fit"):
        resolve_model(card)


def test_a_card_in_a_run_folder_names_its_rule(tmp_path):
    run = tmp_path / "results" / "train" / "torch" / "hybrid2" / "4gpu"
    run.mkdir(parents=True)
    card = _card(run, backend="torch", model_file="best_model.pt", trial={"trial_id": "t1"})
    with pytest.raises(ContractError) as err:
        resolve_model(card)
    assert str(err.value) == (
        f"{card}: no format: written before distmis-model-card/1 (an older DistMIS); "
        "rerun train_hybrid_parallel"
    )


def test_broken_cards_name_the_file_and_the_training_rules(tmp_path):
    card = write_card(tmp_path)
    payload = json.loads(card.read_text())
    del payload["backend"]
    card.write_text(json.dumps(payload))
    with pytest.raises(
        ContractError, match=rf"best_model\.json: missing \['backend'\].*; rerun {RULES}"
    ):
        resolve_model(card)
    payload = {**json.loads(write_card(tmp_path).read_text()), "trial": {"trial_id": "t1"}}
    card.write_text(json.dumps(payload))
    with pytest.raises(ContractError, match=r"best_model\.json: trial: missing \['attempts'"):
        resolve_model(card)
    card.write_text("{not json")
    with pytest.raises(ContractError, match=r"best_model\.json is not valid JSON"):
        resolve_model(card)
    with pytest.raises(ContractError, match=r"gone\.json is missing .*train_data_parallel"):
        resolve_model(tmp_path / "gone.json")
