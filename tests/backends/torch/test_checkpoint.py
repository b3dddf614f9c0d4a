"""The saved PyTorch model: architecture + weights in one file, read back without its trainer."""

from __future__ import annotations

import pytest
import torch

from distmis.backends.torch.checkpoint import load_model, save_model
from distmis.backends.torch.unet import build_unet_torch
from distmis.errors import ContractError

ARCHITECTURE = {"in_channels": 4, "out_channels": 3, "depth": 2, "base_filters": 4, "norm": "batch"}


def test_round_trip_gives_the_same_outputs(tmp_path):
    model = build_unet_torch(**ARCHITECTURE, seed=7)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 4, 8, 8, 8))  # moves the BatchNorm statistics off their start
    model.eval()
    path = save_model(tmp_path / "model.pt", model, ARCHITECTURE)
    loaded = load_model(path)
    assert not loaded.training
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_wrapped_model_is_saved_unwrapped(tmp_path):
    model = build_unet_torch(**ARCHITECTURE, seed=1)
    wrapper = torch.nn.Module()
    wrapper.module = model  # as DistributedDataParallel holds it
    save_model(tmp_path / "model.pt", wrapper, ARCHITECTURE)
    assert load_model(tmp_path / "model.pt").state_dict().keys() == model.state_dict().keys()


def test_bad_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ContractError, match="missing.pt is missing"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ContractError, match="garbage.pt is not a readable PyTorch file"):
        load_model(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ContractError, match="expected format"):
        load_model(foreign)
    with pytest.raises(ValueError, match="architecture lacks"):
        save_model(tmp_path / "x.pt", build_unet_torch(**ARCHITECTURE), {"depth": 2})
