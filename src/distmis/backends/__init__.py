"""The frameworks that train and evaluate the U-Net, each in its own home, behind one interface.

- ``tensorflow`` (:mod:`distmis.backends.tensorflow`): tf_keras U-Net and losses, the tf.data
  pipeline, the Keras training steps, the ``.keras`` predictor;
- ``torch`` (:mod:`distmis.backends.torch`): the same U-Net and losses in PyTorch, a
  TensorFlow-free TFRecord reader and batch stream, the training steps, the ``.pt`` model file
  and its predictor.

:func:`get` is the one place a backend is chosen; stages call the :class:`~distmis.backends.base.Backend`
it returns and never branch on its name. Importing this package or calling :func:`get` imports
no framework (a torch worker must never load TensorFlow, nor the reverse): each backend imports
its framework inside the methods that need it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distmis.backends.base import Backend

# train.backend's values in the schema, and the folder names of results/train/{backend}/.
NAMES = ("tensorflow", "torch")


def get(name: str) -> Backend:
    """The backend called ``name`` (one of :data:`NAMES`); ValueError names the choices."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}").BACKEND


def for_model_file(path: Path | str) -> Backend:
    """The backend whose model files end like ``path`` (``.keras`` or ``.pt``)."""
    suffix = Path(path).suffix
    for name in NAMES:
        backend = get(name)
        if backend.model_suffix == suffix:
            return backend
    suffixes = [get(name).model_suffix for name in NAMES]
    raise ValueError(f"a model file ends in one of {suffixes}, got {path}")


def model_suffixes() -> tuple[str, ...]:
    """Every backend's model-file suffix, in :data:`NAMES` order."""
    return tuple(get(name).model_suffix for name in NAMES)
