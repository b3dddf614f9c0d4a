"""``train.torch``: the switches only the torch backend reads, their defaults and their rules.

A run carries them as its settings' ``backend_options`` mapping (:class:`TorchOptions`'s
fields); :meth:`TorchBackend.check_options <distmis.backends.torch.TorchBackend.check_options>`
checks them once per config and once per run, and the trial's steps read them back with
:meth:`TorchOptions.from_mapping`. Adding a switch is a field here (default and rule), its key
under ``train.torch`` in the config schema, and its effect in :mod:`.loop`. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from distmis.errors import ConfigError

# fp32, or torch.autocast in bfloat16 / float16 (the latter with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TorchOptions:
    """The torch backend's switches: autocast ``precision``, the model and batches in
    ``channels_last_3d`` memory format, and ``loader_workers`` DataLoader processes per worker
    (config ``null``: the worker's cores beyond the one that trains, resolved by
    :meth:`~distmis.backends.torch.TorchBackend.options`)."""

    precision: str = "fp32"
    channels_last_3d: bool = False
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"train.torch.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if not isinstance(self.channels_last_3d, bool):
            raise ConfigError(
                f"train.torch.channels_last_3d must be true or false, got {self.channels_last_3d!r}"
            )
        workers = self.loader_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(
                f"train.torch.loader_workers must be an integer >= 0, got {workers!r}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> TorchOptions:
        """The switches ``options`` sets (the others at their defaults); an unknown one fails."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"train.torch: unknown option(s) {unknown}; known: {known}")
        return cls(**options)

    def device_problem(self, use_gpu: bool) -> str | None:
        """Why these switches cannot train on this device (None: they can)."""
        if use_gpu:
            return None
        if self.precision == "fp16":
            return (
                "train.torch.precision: fp16 needs train.use_gpu: true (CPUs have no fast "
                "float16 kernels); use bf16 for mixed precision on CPUs"
            )
        if self.precision == "bf16" and self.channels_last_3d:
            # PyTorch's CPU Conv3d weight gradient in bf16 with channels_last_3d returns NaN in
            # about one fresh run in five (seen with torch 2.13 on this project's CI machines:
            # finite inputs, finite forward and loss, a NaN weight gradient at the smallest
            # level), which Adam then spreads to every weight. bf16 alone did so too, but
            # rarely (once in some fifty runs): warned about, not refused.
            return (
                "train.torch: precision bf16 with channels_last_3d is a GPU combination; on "
                "CPUs PyTorch's bf16 Conv3d weight gradient in channels_last_3d sometimes comes "
                "back NaN. With train.use_gpu: false, set channels_last_3d: false (bf16 alone "
                "works) or precision: fp32"
            )
        return None

    def device_warning(self, use_gpu: bool) -> str | None:
        """What these switches risk on this device without being refused (None: nothing)."""
        if self.precision == "bf16" and not use_gpu:
            return (
                "train.torch.precision: bf16 on CPUs (train.use_gpu: false): PyTorch's CPU bf16 "
                "Conv3d backward now and then returns NaN gradients; fp32 is the safe choice there"
            )
        return None
