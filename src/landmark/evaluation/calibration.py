"""Calibration of the ranking stages on a store's own labelled photos: the DBA / alpha-QE similarity
threshold and the category re-rank, each fitted on a validation split (see :mod:
for how it is carved) and switched off where it cannot show a gain. Test labels are never read here."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..config import CategoryConfig, Config, ExpansionConfig, explicit, merge
from ..pipeline import Parts
from ..recognition.calibrate import CALIBRATION_META, calibrate_store
from ..recognition.holdout import VAL_FRACTION, VAL_SEED, held_out_by_whitening, held_out_label, model_validation_ids
from ..retrieval.expansion import EXPANSION_META
from .spaces import Space, category_ranks, fit_threshold, retrieve, validation_space, validation_split

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


class Validation(NamedTuple):
    """A store's validation space, its mAP@100 scorer, its number of known non-landmarks, and how
    its photos were split (``"held out by the model"``, ``"held out by the learned whitening"`` or ``"by photo"``)."""

    space: Space
    score: Callable[[np.ndarray], float]
    negatives: int
    split: str


def store_validation(
    lm: Parts,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    train_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> Validation | None:
    """:func:`validation_space` of a store's labelled photos (of ``train_ids`` only, if given), with
    its known non-landmarks in the database, after ``transform``; None without a validation query.
    For a store of a model from ``landmark train``, the photos that model held out are the database
    and the queries, and the photos it trained on vote (unless that gives fewer than
    ``MIN_HELD_QUERIES`` queries that can find their landmark)."""
    store = lm.ctx.store
    wanted = set(train_ids) if train_ids is not None else None
    rows = store.get(store.keys())
    keys = [k for k, r in rows.items() if r.landmark_id is not None and (wanted is None or k in wanted)]
    if not keys:
        return None
    labels = np.array([rows[k].landmark_id for k in keys], np.int64)
    held_ids = model_validation_ids(store, keys, seed)
    held = [k in held_ids for k in keys] if held_ids else None
    if held is not None and answerable_queries(keys, labels, seed, held) < MIN_HELD_QUERIES:
        if held_out_by_whitening(store) is not None:  # the others taught the whitening: never validate on them
            log.warning(
                "the photos the store's learned whitening held out give fewer than %d validation queries "
                "with a photo of their landmark to find: the retrieval calibration is noisy",
                MIN_HELD_QUERIES,
            )
        else:
            log.warning(
                "the photos the store's model held out give fewer than %d validation queries with a photo "
                "of their landmark to find (a landmark needs 2 of them): the retrieval calibration splits "
                "all labelled photos instead",
                MIN_HELD_QUERIES,
            )
            held = None
    _, negatives = lm.recognising.recognizer.known_non_landmarks(lm.ctx.recognition_config)
    transform = transform or (lambda x: x)
    space, score = validation_space(
        transform(store.vectors(keys)),
        labels,
        seed,
        transform(negatives) if len(negatives) else None,
        k=lm.ctx.recognition_config.k,
        held=held,
    )
    if not len(space.queries):
        return None
    return Validation(space, score, len(negatives), held_out_label(store) if held else "by photo")


MIN_HELD_QUERIES = 10  # a split of a model's held-out photos answering fewer is not used


def answerable_queries(keys: Sequence[str], labels: np.ndarray, seed: int, held: Sequence[bool] | None) -> int:
    """How many queries of :func:`validation_split` have a database photo of their landmark."""
    _, db, qs = validation_split(keys, np.asarray(labels).tolist(), seed, held)
    in_db = {int(labels[i]) for i in db}
    return sum(int(labels[i]) in in_db for i in qs)


MIN_VALIDATION_QUERIES = 30  # fewer validation queries than this cannot tell a stage that helps from noise


def too_few_to_validate(validation: Validation | None) -> str | None:
    """Why ``validation`` cannot decide whether a retrieval stage helps (None: it can): no labelled
    photos, or fewer than :data:`MIN_VALIDATION_QUERIES` queries (e.g. one photo per landmark)."""
    if validation is None:
        return "no labelled photos with a second photo of their landmark to validate on"
    n = len(validation.space.queries)
    if n < MIN_VALIDATION_QUERIES:
        return f"{n} validation queries (fewer than {MIN_VALIDATION_QUERIES}: too few labelled photos per landmark)"
    return None


def validation_info(found: Validation | None, seed: int, prior_source: str) -> dict[str, Any]:
    """What a calibration report says of the validation split it had (or did not have)."""
    if found is None:
        return {
            "database_photos": 0,
            "queries": 0,
            "known_non_landmarks": 0,
            "split": "none",
            "seed": seed,
            "prior_source": prior_source,
        }
    return {
        "database_photos": len(found.space.index),
        "queries": len(found.space.queries),
        "known_non_landmarks": found.negatives,
        "split": found.split,
        "seed": seed,
        "prior_source": prior_source,
    }


def configured_expansion(ec: ExpansionConfig, report: Mapping[str, Any]) -> ExpansionConfig:
    """``ec`` as configured before the safe default of an earlier calibration (its ``report``) replaced
    it: a store that had too few labelled photos then is validated again with its own settings."""
    if "configured" in report:
        return dataclasses.replace(ec, **report["configured"])
    if "(safe default)" in str(report.get("decision", "")):  # kept before the report named them: the defaults
        return dataclasses.replace(ec, dba=ExpansionConfig.dba, qe=ExpansionConfig.qe)
    return ec


def calibrate_expansion(
    lm: Parts,
    *,
    train_ids: Sequence[str] | None = None,
    seed: int = 0,
    write: bool = True,
    validation: Validation | None = None,
) -> dict[str, Any] | None:
    """Decide DBA / alpha-QE for ``lm``'s store on its validation split with its known non-landmarks,
    in the space the store searches: refit ``expansion.threshold`` (verify ``vote+threshold`` /
    ``threshold``), and switch both off where expanding scores below plain kNN on validation. Where
    the store has too few labelled photos to tell (:func:`too_few_to_validate`) the safe default
    applies, and the report says so: DBA verified by local-feature inliers alone (``verify="inliers"``,
    alpha-QE off) where the store has local features, else both off; the configured settings are kept
    in the report (``configured``), which a later calibration starts from. Used from now on and, if
    ``write``, kept in the store with the verifier (only when the store's own configured
    ``expansion.verify`` is the one it was decided for). None where
    the configuration expands nothing. ``validation``: the :func:`store_validation` of these
    ``train_ids`` / ``seed``, if already made."""
    store = lm.ctx.store
    before = store.meta_value(EXPANSION_META) or {}
    ec = configured_expansion(lm.ctx.config.expansion, before)
    if not (ec.dba or ec.qe):
        return None
    found = validation or store_validation(lm, train_ids=train_ids, seed=seed)
    why = too_few_to_validate(found)
    report: dict[str, Any] = {"verify": ec.verify, "threshold": ec.threshold, "trials": []}
    if why is not None or found is None:  # (no validation: why says so)
        report["configured"] = {"dba": ec.dba, "qe": ec.qe, "verify": ec.verify}
        if ec.dba and lm.ctx.has_local_features:  # local features verify without labels or a fitted threshold
            fitted = dataclasses.replace(ec, dba=True, qe=False, verify="inliers")
            needs = f">= {lm.ctx.config.rerank.verified_inliers} inliers among the {ec.inlier_k} nearest"
            decision = f"DBA verified by local features only ({needs}), alpha-QE off (safe default): {why}"
        else:
            fitted = dataclasses.replace(ec, dba=False, qe=False)
            decision = f"DBA and alpha-QE off (safe default): {why}"
        report |= {
            "verify": fitted.verify,
            "dba": fitted.dba,
            "qe": fitted.qe,
            "decision": decision,
            "validation": validation_info(found, seed, lm.ctx.prior_source),
        }
    else:
        space, score = found.space, found.score
        plain = score(retrieve(space, ec, dba_on=False, qe_on=False))
        fitted, trials = fit_threshold(space, score, ec)
        expanded = max(t["map"] for t in trials) if trials else score(retrieve(space, ec, dba_on=ec.dba, qe_on=ec.qe))
        helps = expanded >= plain
        if not helps:
            fitted = dataclasses.replace(fitted, dba=False, qe=False)
        report |= {
            "threshold": fitted.threshold,
            "dba": fitted.dba,
            "qe": fitted.qe,
            "validation_map": expanded,
            "validation_map_plain": plain,
            "trials": trials,
            "decision": (
                f"on: validation mAP@100 {plain:.4f} -> {expanded:.4f}"
                if helps
                else f"off: it lowered validation mAP@100 {plain:.4f} -> {expanded:.4f}"
            ),
            "validation": validation_info(found, seed, lm.ctx.prior_source),
        }
    lm.searching.set_expansion_config(fitted)
    if write and configured_expansion(store.config.expansion, before).verify == ec.verify:
        store.update_config(
            dataclasses.replace(
                store.config,
                expansion=dataclasses.replace(
                    store.config.expansion,
                    threshold=fitted.threshold,
                    dba=fitted.dba,
                    qe=fitted.qe,
                    verify=fitted.verify,
                ),
            )
        )
        store.set_meta_value(EXPANSION_META, report)
    return report


CATEGORY_META = "category_calibration"


def ranking_settings(ec: ExpansionConfig) -> dict[str, Any]:
    """The DBA / alpha-QE settings a category calibration was fitted after (its staleness key)."""
    return {k: getattr(ec, k) for k in ("dba", "qe", "verify", "threshold")}


SIMILARITIES = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.3 .. 0.95


def fit_category(
    space: Space,
    score: Callable[[np.ndarray], float],
    ranks: np.ndarray,
    cc: CategoryConfig,
    similarities: Sequence[float] = SIMILARITIES,
) -> tuple[CategoryConfig, list[dict[str, float]], float]:
    """The category re-rank of ``ranks`` that scores best on ``space``: ``cc`` with the best
    ``min_similarity`` (ties: the lowest), switched off where none beats the ranking as it is;
    every trial; the score without it."""
    before = score(ranks)
    trials = []
    for t in similarities:
        m = score(category_ranks(ranks, space, dataclasses.replace(cc, min_similarity=float(t))))
        trials.append({"min_similarity": float(t), "map": m})
    if not trials:
        return dataclasses.replace(cc, enabled=False), trials, before
    best = max(trials, key=lambda t: (t["map"], -t["min_similarity"]))
    return (
        dataclasses.replace(cc, enabled=bool(best["map"] > before + 1e-9), min_similarity=best["min_similarity"]),
        trials,
        before,
    )


def calibrate_category(
    lm: Parts,
    *,
    train_ids: Sequence[str] | None = None,
    seed: int = 0,
    write: bool = True,
    validation: Validation | None = None,
) -> dict[str, Any] | None:
    """Refit the category re-rank (on/off, ``min_similarity``) of ``lm``'s store on its validation
    split with its known non-landmarks, after DBA / alpha-QE as ``lm`` expands; use it from now on
    and, if ``write``, keep it in the store. None without labelled photos. ``validation``: as for
    :func:`calibrate_expansion`."""
    found = validation or store_validation(lm, train_ids=train_ids, seed=seed)
    ec = lm.ctx.config.expansion
    why = too_few_to_validate(found)
    if why is not None or found is None:  # the re-rank trusts votes that nothing here can check: off
        fitted = dataclasses.replace(lm.ctx.config.category, enabled=False)
        report = {
            "enabled": False,
            "min_similarity": fitted.min_similarity,
            "trials": [],
            "decision": f"off (safe default): {why}",
            "expansion": ranking_settings(ec),
            "validation": validation_info(found, seed, lm.ctx.prior_source),
        }
    else:
        space, score = found.space, found.score
        fitted, trials, before = fit_category(
            space, score, retrieve(space, ec, dba_on=ec.dba, qe_on=ec.qe), lm.ctx.config.category
        )
        after = max([before] + [t["map"] for t in trials])
        report = {
            "enabled": fitted.enabled,
            "min_similarity": fitted.min_similarity,
            "validation_map_before": before,
            "validation_map": after,
            "trials": trials,
            "expansion": ranking_settings(ec),
            "decision": (
                f"on: validation mAP@100 {before:.4f} -> {after:.4f}"
                if fitted.enabled
                else "off: no similarity threshold raised validation mAP@100"
            ),
            "validation": validation_info(found, seed, lm.ctx.prior_source),
        }
    lm.searching.set_category_config(fitted)
    store = lm.ctx.store
    if write and ranking_settings(store.config.expansion) == report["expansion"]:
        # a fit after other DBA / alpha-QE settings than the store's own serves that run only
        store.update_config(dataclasses.replace(store.config, category=fitted))
        store.set_meta_value(CATEGORY_META, report)
    return report


def calibration_decisions(
    recognition: Mapping[str, Any] | None, expansion: Mapping[str, Any] | None, category: Mapping[str, Any] | None
) -> dict[str, str]:
    """Which stages calibration switched on or off and why, one line each, from its three reports
    (a run's, for ``landmark evaluate``; a store's kept ones, :func:`store_calibration_decisions`);
    stages never calibrated are left out."""
    out = {f"recognition.{stage}": why for stage, why in ((recognition or {}).get("decisions") or {}).items()}
    if decided := (expansion or {}).get("decision"):
        out["expansion (DBA, alpha-QE)"] = decided
    if decided := (category or {}).get("decision"):
        out["category re-rank"] = decided
    return out


def store_calibration_decisions(store) -> dict[str, str]:
    """:func:`calibration_decisions` of the reports a store keeps (``landmark index info``)."""
    return calibration_decisions(
        store.meta_value(CALIBRATION_META), store.meta_value(EXPANSION_META), store.meta_value(CATEGORY_META)
    )


def calibrate_store_parts(
    lm: Parts,
    *,
    train_ids: Sequence[str] | None = None,
    val_fraction: float = VAL_FRACTION,
    seed: int = VAL_SEED,
    landmark_loss: float = 0.02,
    expansion: bool = True,
    category: bool = True,
    respect: Config | None = None,
    progress: bool | None = None,
) -> dict:
    """``Landmarks.calibrate``: refit the recognition thresholds (object prior, distractor filter, grades) and,
    if asked,
    the DBA / alpha-QE verification threshold (``expansion``) and the category re-rank
    (``category``) on validation splits of the labelled photos (of ``train_ids`` only, if given);
    they are kept in the store and used from now on. What the user's ``respect`` sets explicitly
    stays (its expansion threshold, category and recognition settings). Never reads test data.
    Returns ``{"recognition": report, "expansion": report or None, "category": report or None}``."""
    if respect is not None:
        expansion, category = (
            expansion and not explicit_threshold(respect),
            category and not explicit(respect, "category"),
        )
    lm.recognising.ensure_extras(progress=progress)
    # fitted for the store's own query views (a store calibrated before them recognises without until now)
    own = lm.ctx.store.config.recognition
    rec = lm.recognising
    rec.set_recognition_config(dataclasses.replace(rec.recognition_config, regions=own.regions, zoom=own.zoom))
    recognition = calibrate_store(
        rec, train_ids=train_ids, val_fraction=val_fraction, seed=seed, landmark_loss=landmark_loss, progress=progress
    )
    # one retrieval validation split (it depends on the known non-landmarks, so after recognition)
    validation = store_validation(lm, train_ids=train_ids, seed=seed) if expansion or category else None
    fitted = calibrate_expansion(lm, train_ids=train_ids, seed=seed, validation=validation) if expansion else None
    fitted_category = (
        calibrate_category(lm, train_ids=train_ids, seed=seed, validation=validation) if category else None
    )
    if mine := (explicit(respect, "recognition") if respect is not None else {}):
        lm.ctx.store.update_config(
            dataclasses.replace(lm.ctx.store.config, recognition=merge(lm.ctx.store.config.recognition, mine))
        )
    return {"recognition": recognition, "expansion": fitted, "category": fitted_category}


def explicit_threshold(config: Config) -> bool:
    """Whether ``config`` sets ``expansion.threshold`` itself (calibration then leaves it alone)."""
    return "threshold" in explicit(config, "expansion")
