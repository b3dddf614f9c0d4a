"""Which model to evaluate: a model file, or the ``best_model.json`` card training writes.

This is the one place evaluation reads the training stage's contract. It lives apart from
:mod:`~distmis.evaluate.predict` because it loads no model and imports no framework: the
orchestrator resolves and checks the model path (and learns the trial for ``summary.json``)
before anything heavy is imported, and its tests need neither TensorFlow nor PyTorch.

The card is ``{"backend", "model_file" (relative to the card's folder), "trial", "model",
"tfrecord_dir"}`` (:func:`distmis.train.summary.save_best_model`). Beside a model file it has the
file's stem (``best_model.pt`` → ``best_model.json``); there only its ``trial`` is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distmis import backends, modes
from distmis.backends.base import Backend
from distmis.errors import ContractError
from distmis.fileio import read_json

MADE_BY = f"rule {modes.ANY_RULE} (`distmis train`)"
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

    Another suffix raises ValueError; a card that is missing, unreadable, lacks a key or names
    a backend its model file does not fit raises ContractError naming the training rules.
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
    return TrainedModel(model_path, backend, card, _trial_id(read_json(card, MADE_BY)))


def _from_card(card: Path) -> TrainedModel:
    content = read_json(card, MADE_BY)
    try:
        name, model_file = content["backend"], card.parent / content["model_file"]
    except (KeyError, TypeError) as exc:
        raise ContractError(f"{card} lacks {exc}; rerun {MADE_BY}") from exc
    backend = _backend_named(name)
    if backend is None or backend.model_suffix != model_file.suffix:
        fits = ", ".join(f"{backends.get(n).model_suffix} is {n}" for n in backends.NAMES)
        raise ContractError(
            f"{card}: backend {name!r} does not fit model_file {model_file.name!r} "
            f"({fits}); rerun {MADE_BY}"
        )
    return TrainedModel(model_file, backend, card, _trial_id(content))


def _backend_named(name: object) -> Backend | None:
    # A card naming an unknown backend is a broken contract, reported like a mismatch.
    return backends.get(name) if name in backends.NAMES else None


def _trial_id(content: object) -> str | None:
    """The best trial's id from a card's ``trial`` row, if the card has one."""
    trial = content.get("trial") if isinstance(content, dict) else None
    return trial.get("trial_id") if isinstance(trial, dict) else None
