"""Which labelled photos calibration holds out as validation queries: those a store's trained model
held out (``landmark train``), those its learned whitening was not learned on, else a split by photo."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from ..data.manifests import ImageRecord
from ..data.splits import split_by_photo
from ..features.pipeline import WHITENING_FILE
from ..features.whitening import Whitening
from ..models.net import read_checkpoint

log = logging.getLogger(__name__)

VAL_FRACTION, VAL_SEED = 0.15, 0  # calibrate's split by photo: the share of each landmark's photos, the seed


def held_out_by_model(store) -> set[str] | None:
    """:func:`held_out_by_config` of the store's configuration."""
    return held_out_by_config(store.config)


def held_out_by_config(config) -> set[str] | None:
    """The ids of the photos that none of the trained models of ``config`` trained on: the intersection of
    the validation photos that ``landmark train`` records in the checkpoint of ``model`` and of each
    trained ``ensemble`` member (pretrained members trained on none, nor did members trained on the
    pseudo-landmarks of an unlabelled split, ``data.split`` other than ``train``). None when no model
    trained on labelled photos, or such a one records none (an older checkpoint, or one trained on every photo)."""
    held: set[str] | None = None
    for model in (config.model, *config.ensemble):
        if not model.checkpoint:
            continue
        if not Path(model.checkpoint).is_file():
            return None
        st = Path(model.checkpoint).stat()
        split, ids = _checkpoint_held_out(str(Path(model.checkpoint).resolve()), st.st_mtime_ns, st.st_size)
        if split != "train":
            continue
        if not ids:
            return None
        held = set(ids) if held is None else held & set(ids)
    if held is not None and not held:
        log.warning(
            "the store's trained models held out no photo in common (trained with different seeds or "
            "data?): calibrations validate on a split by photo, which they trained on"
        )
    return held


@functools.lru_cache(maxsize=4)
def _checkpoint_held_out(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[str, ...]]:
    """The split a checkpoint was trained on (``train`` when it predates the record) and the ``val_ids``
    it held out, read once per version of the file (calibrations ask several times)."""
    payload = read_checkpoint(path, required=())
    return payload.get("train_split", "train"), tuple(payload.get("val_ids") or ())


def held_out_by_whitening(store) -> set[str] | None:
    """The labelled photos a store's learned whitening (``whitening.kind=learned``) was not learned on,
    as its file records them; None for other stores."""
    path = Path(store.root) / WHITENING_FILE if store.config.whitening.kind != "none" else None
    if path is None or not path.is_file():
        return None
    st = path.stat()
    held = _whitening_held_out(str(path.resolve()), st.st_mtime_ns, st.st_size)
    return None if held is None else set(held)


@functools.lru_cache(maxsize=4)
def _whitening_held_out(path: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    """The ``held_out`` of a learned whitening file, read once per version of the file (None: PCA)."""
    w = Whitening.load(path)
    return frozenset(w.held_out) if w.kind == "learned" else None


def held_out_label(store) -> str:
    """How a store's validation photos were held out, for calibration reports."""
    return "held out by the learned whitening" if held_out_by_whitening(store) is not None else "held out by the model"


def validation_holdout(
    config, labelled: Sequence[ImageRecord], val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED
) -> set[str]:
    """The ``labelled`` photos that a store of ``config`` keeps out of what it learns from labels (its
    learned whitening), for calibrations to validate on: those its trained models held out when at
    least half of them are among ``labelled`` (as :func:`model_validation_ids` requires), else the
    split by photo that ``landmark calibrate`` makes."""

    found = _held_here(held_out_by_config(config), [r.id for r in labelled], seed)
    return found or {r.id for r in split_by_photo(labelled, val_fraction, 2, seed).val}


def _held_here(held: set[str] | None, labelled: Sequence[str], seed: int) -> set[str]:
    """Those of ``labelled`` among the photos trained models ``held`` out; empty when none are known or
    fewer than half of them are among ``labelled`` (another dataset than the models')."""
    if not held:
        return set()
    found = held.intersection(labelled)
    if len(found) < 0.5 * len(held):
        log.warning(
            "only %d of the %d photos the store's model held out are labelled here: validating on a "
            "split by photo (seed %d) instead",
            len(found),
            len(held),
            seed,
        )
        return set()
    return found


def model_validation_ids(store, labelled: Sequence[str], seed: int = 0) -> set[str]:
    """Those of the ``labelled`` store photos that the store never fitted anything on (what calibrations
    validate on): for a store with a learned whitening, the photos it recorded as held out (which
    include those its trained models held out); else those the store's trained models never trained
    on. Empty for a pretrained model without a learned whitening, or when fewer than half of the
    photos a model held out are among ``labelled`` (another dataset than the model's): the caller
    then splits the photos itself."""
    learned = held_out_by_whitening(store)
    if learned is not None:
        found = learned.intersection(labelled)
        if not found:
            log.warning(
                "none of the photos the store's learned whitening held out are among these labelled ones: "
                "validating on photos it was learned on"
            )
        return found
    return _held_here(held_out_by_model(store), labelled, seed)
