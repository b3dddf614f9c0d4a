"""The saved PyTorch model: one ``.pt`` file holding the architecture and the weights.

Format (``torch.save`` of a plain dict, so ``torch.load(weights_only=True)`` reads it without
unpickling arbitrary objects)::

    {"format": "distmis-unet3d-torch/1",
     "architecture": {"in_channels", "out_channels", "depth", "base_filters", "norm"},
     "state_dict": UNet3D.state_dict()}   # parameters and BatchNorm statistics, float32

:func:`load_model` rebuilds the U-Net with :func:`distmis.backends.torch.unet.build_unet_torch`
and loads the weights, in eval mode on the CPU. It never needs the code that trained it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distmis.backends.torch.unet import UNet3D, build_unet_torch
from distmis.errors import ContractError
from distmis.fileio import atomic_path

FORMAT = "distmis-unet3d-torch/1"
ARCHITECTURE_KEYS = ("in_channels", "out_channels", "depth", "base_filters", "norm")


def _unwrapped(model: nn.Module) -> nn.Module:
    # DistributedDataParallel (and torch.compile) keep the real model in .module.
    return getattr(model, "module", model)


def save_model(path: Path | str, model: nn.Module, architecture: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and ``architecture`` (the build_unet_torch arguments) to ``path``."""
    missing = [k for k in ARCHITECTURE_KEYS if k not in architecture]
    if missing:
        raise ValueError(f"architecture lacks {missing}")
    state = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in _unwrapped(model).state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "architecture": {k: architecture[k] for k in ARCHITECTURE_KEYS},
        "state_dict": state,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: Path | str, made_by: str = "`distmis train --backend torch`") -> UNet3D:
    """The U-Net saved at ``path``, in eval mode on the CPU; ContractError names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path} is missing (it is written by {made_by})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same contract break
        raise ContractError(
            f"{path} is not a readable PyTorch file ({exc}); rerun {made_by}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ContractError(f"{path}: expected format {FORMAT!r}, found {found!r}; rerun {made_by}")
    architecture = payload["architecture"]
    model = build_unet_torch(**{k: architecture[k] for k in ARCHITECTURE_KEYS})
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ContractError(f"{path}: weights do not fit the architecture ({exc})") from exc
    return model.eval()
