"""Which model to evaluate: a model file, or the ``best_model.json`` card training writes.

This is the one place evaluation reads the training stage's contract. It lives apart from
:mod:`~distmis.evaluate.predict` because it loads no model and imports no framework: the
orchestrator resolves and checks the model path (and learns the trial for ``summary.json``)
before anything heavy is imported, and its tests need neither TensorFlow nor PyTorch.

The card is a :class:`distmis.run_folder.ModelCard` (``backend``, ``model_file`` relative to the
card's folder, ``trial``, ``model``, ``tfrecord_dir``), read through that contract. Beside a model
file it has the file's stem (``best_model.pt`` → ``best_model.json``); there only its ``trial``
is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distmis import backends
from distmis.backends.base import Backend
from distmis.errors import ContractError
from distmis.run_folder import ModelCard, rule_for

CARD_SUFFIX = ".json"


@dataclass(frozen=True)
class TrainedModel:
    """A model file, the backend that loads it, and its card (``None`` when there is none)."""

    file: Path
    backend: Backend
    card: Path | None
    trial_id: str | None


def resolve_model(model_path: Path) -> TrainedModel:
    """The :class:`TrainedModel` behind a ``.keras`` or ``.pt`` file or a ``.json`` card.

    Another suffix raises ValueError; a card that is missing, unreadable, of another format,
    lacks a key or names a backend its model file does not fit raises ContractError naming the
    training rule.
    The model file itself is not opened (see :func:`distmis.evaluate.predict.load_predictor`).
    """
    model_path = Path(model_path)
    if model_path.suffix == CARD_SUFFIX:
        return _from_card(model_path)
    try:
        backend = backends.for_model_file(model_path)
    except ValueError:
        suffixes = " or ".join(backends.model_suffixes())
        raise ValueError(
            f"model must be a {suffixes} file or a {CARD_SUFFIX} model card, got {model_path}"
        ) from None
    card = model_path.with_suffix(CARD_SUFFIX)
    if not card.is_file():
        return TrainedModel(model_path, backend, None, None)
    return TrainedModel(model_path, backend, card, ModelCard.read(card).trial.trial_id)


def _from_card(card: Path) -> TrainedModel:
    content = ModelCard.read(card)
    model_file = content.model_path(card)
    backend = _backend_named(content.backend)
    if backend is None or backend.model_suffix != model_file.suffix:
        fits = ", ".join(f"{backends.get(n).model_suffix} is {n}" for n in backends.NAMES)
        raise ContractError(
            f"{card}: backend {content.backend!r} does not fit model_file {model_file.name!r} "
            f"({fits}); rerun {rule_for(card)}"
        )
    return TrainedModel(model_file, backend, card, content.trial.trial_id)


def _backend_named(name: str) -> Backend | None:
    # A card naming an unknown backend is a broken contract, reported like a mismatch.
    return backends.get(name) if name in backends.NAMES else None
