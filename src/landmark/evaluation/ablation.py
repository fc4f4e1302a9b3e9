"""The retrieval ablation of ``landmark evaluate`` (like Table 1 of Baidu GLR19) and its validation split.

Every step works on arrays that are already extracted, so one extraction of the store and the
queries gives all rows; only multi-scale needs a second extraction (an opt-in row).

Rows are cumulative: plain kNN -> + multi-scale -> + PCA-whitening -> + DBA -> + alpha-QE -> + category
re-rank (Baidu §2.2: the query's confidently voted landmark first).

The hyper-parameters those steps use (whitening dim/power/shrinkage, how M is found, the QE
weights, the similarity threshold) are chosen by :func:`tune_on_validation` on a split carved out
of the labelled ``train`` photos only: per landmark, a third of the photos vote (labelled), a third
is the database, a third are the queries; PCA is learned on the unlabelled ``index`` photos, as on
test. The calibrations of a store (:func:`store_validation`) split the same way, except for a store
of a model from ``landmark train``: there the photos it trained on vote and those it held out are
database and queries. The store's known non-landmarks (photos its object prior flags, split
``distractors``) join that database as photos relevant to no query: a test database holds such
photos too, and a verifier that lets them in (``verify="vote"``: every photo gets a voted
landmark) costs mAP only then. :func:`calibrate_expansion` fits the similarity threshold of
``verify="vote+threshold"`` the same way, in the space the store searches, and
:func:`calibrate_category` the category re-rank after it.
Test labels are never read here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import Config, ExpansionConfig
from ..data.manifests import read_gldv2
from ..features.pipeline import base_extractor, whitening_in_force
from ..metrics import mean_average_precision_at_k
from ..pipeline import Parts
from .calibration import store_validation
from .spaces import Space, category_ranks, fit_threshold, retrieve, validation_space, whiten

log = logging.getLogger(__name__)


def ablation(
    base: Space,
    score: Callable[[np.ndarray], float],
    config: Config,
    *,
    multiscale: Space | None = None,
    multiscale_note: str = "not run (landmark evaluate --multiscale)",
    k: int = 100,
    refit: Callable[[Callable[[np.ndarray], np.ndarray]], ExpansionConfig] | None = None,
) -> list[dict[str, Any]]:
    """The cumulative rows; ``score`` maps Q x k database indices to mAP@k.

    ``refit(transform)``, if given, returns the expansion settings to use once ``transform`` (the
    PCA of the "+ PCA-whitening" row) is applied: thresholds are similarities, so they are fitted
    again in the space the DBA and QE rows search. Without that row (a whitened store), the rows use
    ``config.expansion`` as it is, the settings of the submitted ranking.
    """
    rows: list[dict[str, Any]] = []

    def add(step: str, value: float | None, note: str = "") -> None:
        prev = next((r["map"] for r in reversed(rows) if r["map"] is not None), None)
        rows.append(
            {"step": step, "map": value, "delta": None if value is None or prev is None else value - prev, "note": note}
        )

    add("plain kNN", score(retrieve(base, config.expansion, dba_on=False, qe_on=False, k=k)))
    space = base
    if multiscale is not None:
        space = multiscale
        add("+ multi-scale", score(retrieve(space, config.expansion, dba_on=False, qe_on=False, k=k)), multiscale_note)
    else:
        add("+ multi-scale", None, multiscale_note)
    ec = config.expansion
    if config.whitening.kind in ("none", "auto"):  # auto: gldv2_ablation says which; here, not whitened
        wc = config.whitening
        space, transform = whiten(space, wc)
        add(
            "+ PCA-whitening",
            score(retrieve(space, config.expansion, dba_on=False, qe_on=False, k=k)),
            f"dim {min(wc.dim, base.index.shape[1])}, power {wc.power}, shrinkage {wc.shrinkage}",
        )
        ec = refit(transform) if refit is not None else ec
    else:
        add(
            "+ PCA-whitening",
            None,
            "already in the store's vectors"
            if config.whitening.kind == "pca"
            else f"the store's vectors are whitened already ({config.whitening.kind})",
        )
    verify = f"verify={ec.verify}" + (f" (similarity > {ec.threshold:.2f})" if "threshold" in ec.verify else "")
    if ec.verify == "inliers":  # this table works on vectors alone: the submitted ranking's rows measure it
        verify += " (local features not verified here: nothing joins)"
    if not (ec.dba or ec.qe):  # calibration switched them off: these rows say what they would have done
        verify = f"off in the submitted ranking (what it would do: {verify})"
    add("+ DBA", score(retrieve(space, ec, dba_on=True, qe_on=False, k=k)), verify)
    expanded = retrieve(space, ec, dba_on=True, qe_on=True, k=k)
    add("+ alpha-QE", score(expanded), f"weights={ec.qe_weights}")
    cc = config.category
    if not cc.enabled:
        add("+ category re-rank", None, "off (category.enabled)")
    elif space.index_votes is None or space.query_votes is None:
        add("+ category re-rank", None, "the space has no labelled neighbours to vote with")
    else:
        add(
            "+ category re-rank",
            score(category_ranks(expanded, space, cc)),
            f"top-{space.query_votes[0].shape[1]} with <= {cc.max_labels} landmarks, "
            f"best similarity > {cc.min_similarity:.2f}",
        )
    return rows


GRID: Mapping[str, Sequence[Any]] = {
    "whitening.dim": (128, 256, 512),
    "whitening.power": (0.0, 0.25, 0.5, 1.0),
    "whitening.shrinkage": (0.0, 0.1, 0.5),
    "expansion.verify": ("none", "vote", "threshold", "vote+threshold"),
    "expansion.threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "expansion.qe_weights": ("rank", "alpha"),
}


def tune_on_validation(
    train: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray,
    config: Config,
    seed: int = 0,
    negatives: np.ndarray | None = None,
) -> dict[str, Any]:
    """Pick whitening and expansion settings by mAP@100 on held-out train photos (two stages);
    ``negatives``: known non-landmarks added to the validation database."""
    space, score = validation_space(train, labels, seed, negatives)
    ec = config.expansion
    results: list[dict[str, Any]] = []
    plain = score(retrieve(space, ec, dba_on=False, qe_on=False))
    best_w, best_w_map = None, -1.0
    for dim, power, shrink in itertools.product(
        GRID["whitening.dim"], GRID["whitening.power"], GRID["whitening.shrinkage"]
    ):
        if power == 0.0 and shrink > 0:
            continue
        wc = dataclasses.replace(config.whitening, dim=dim, power=power, shrinkage=shrink)
        m = score(retrieve(whiten(space, wc, index)[0], ec, dba_on=False, qe_on=False))
        results.append({"whitening": dataclasses.asdict(wc), "map": m})
        if m > best_w_map + 1e-9:
            best_w, best_w_map = wc, m
    assert best_w is not None  # an mAP is >= 0: the first trial is kept
    white = whiten(space, best_w, index)[0]
    best_e, best_e_map = None, -1.0
    for verify, qe_w in itertools.product(GRID["expansion.verify"], GRID["expansion.qe_weights"]):
        for thr in GRID["expansion.threshold"] if "threshold" in verify else (ec.threshold,):
            e = dataclasses.replace(ec, verify=verify, qe_weights=qe_w, threshold=thr)
            m = score(retrieve(white, e, dba_on=True, qe_on=True))
            results.append({"expansion": dataclasses.asdict(e), "map": m})
            if m > best_e_map + 1e-9:
                best_e, best_e_map = e, m
    assert best_e is not None
    return {
        "plain": plain,
        "whitening": dataclasses.asdict(best_w),
        "whitening_map": best_w_map,
        "expansion": dataclasses.asdict(best_e),
        "expansion_map": best_e_map,
        "trials": results,
        "sizes": {"database": len(space.index), "queries": len(space.queries)},
    }


# -- the ablation of `landmark evaluate` on a GLDv2-layout dataset ---------------------------------
def store_space(lm: Parts, query_vectors: np.ndarray) -> tuple[Space, list[str]]:
    """The store's ``index`` photos and the queries, with top-k vote predictions from its ``train`` photos."""
    store, config = lm.ctx.store, lm.ctx.store.config
    index_keys, train_keys = store.keys("index"), store.keys("train")
    rows = store.get(train_keys)
    labels = np.array([rows[t].landmark_id for t in train_keys], np.int64)
    space = Space.with_votes(
        store.vectors(index_keys), query_vectors, store.vectors(train_keys), labels, config.recognition.k
    )
    return space, index_keys


MULTISCALE = (0.7071, 1.0, 1.4142)


def gldv2_ablation(
    lm: Parts,
    data,
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    retrieval_truth: Mapping[str, Sequence[str]],
    *,
    work_dir,
    multiscale: bool = False,
    progress: bool | None = None,
    k: int = 100,
    refit_threshold: bool = True,
) -> list[dict[str, Any]]:
    """Rows of the ablation for a store built from ``train`` + ``index`` and its test queries.

    The store's own vectors and the cached query vectors give every row but multi-scale, which
    extracts ``index`` and ``test`` again at scales 1/sqrt(2), 1, sqrt(2) (``multiscale=True``).
    ``refit_threshold``: fit the expansion threshold again on validation after the PCA row (off:
    the user chose it, or calibration was switched off).
    """
    from pathlib import Path

    wc = lm.ctx.store.config.whitening
    config = dataclasses.replace(
        lm.ctx.store.config,
        expansion=lm.ctx.config.expansion,  # what evaluate searches with
        category=lm.ctx.config.category,
        whitening=dataclasses.replace(wc, kind=whitening_in_force(lm.ctx.store.config, lm.ctx.store.root)),
    )
    base, index_keys = store_space(lm, query_vectors)

    def score(ranks: np.ndarray) -> float:
        rankings = {q: [index_keys[j] for j in r if j >= 0] for q, r in zip(query_ids, ranks)}
        return mean_average_precision_at_k(rankings, retrieval_truth, k=k)

    ms_space, ms_note = None, "not run (landmark evaluate --multiscale)"
    if multiscale and len(config.extract.scales) > 1:
        ms_note = "not run: the store is multi-scale already"
    elif multiscale and config.whitening.kind != "none":
        ms_note = "not run: the store's vectors are whitened (the row compares un-whitened single-scale vectors)"
    elif multiscale:
        cfg = dataclasses.replace(config, extract=dataclasses.replace(config.extract, scales=MULTISCALE))
        ex = base_extractor(cfg, device=str(lm.ctx.extractor.device))
        work = Path(work_dir)
        idx = ex.extract(
            read_gldv2(data, "index").records,
            cache_dir=work / "ms-index",
            progress=progress,
            description="extract index (multi-scale)",
        )
        test = ex.extract(
            read_gldv2(data, "test").records,
            cache_dir=work / "ms-test",
            progress=progress,
            description="extract test (multi-scale)",
        )
        # a photo the multi-scale pass could not read keeps its single-scale vector (rows stay aligned)
        index_ms, missing_i = _replace_rows(base.index, index_keys, idx.ids, idx.vectors)
        queries_ms, missing_q = _replace_rows(base.queries, list(query_ids), test.ids, test.vectors)
        ms_space = dataclasses.replace(base, index=index_ms, queries=queries_ms)
        ms_note = (
            f"{missing_i} index / {missing_q} query photos unreadable there kept their single-scale vectors"
            if missing_i or missing_q
            else ""
        )

    def refit(transform: Callable[[np.ndarray], np.ndarray]) -> ExpansionConfig:
        found = store_validation(lm, transform)
        return fit_threshold(*found[:2], config.expansion)[0] if found is not None else config.expansion

    return ablation(
        base, score, config, multiscale=ms_space, multiscale_note=ms_note, k=k, refit=refit if refit_threshold else None
    )


def _replace_rows(
    vectors: np.ndarray, keys: Sequence[str], ids: Sequence[str], new: np.ndarray
) -> tuple[np.ndarray, int]:
    """``vectors`` (rows named by ``keys``) with each row found in ``ids`` replaced by its row of
    ``new``; and how many were not found."""
    pos = {i: n for n, i in enumerate(ids)}
    out = np.array(vectors, dtype=np.float32, copy=True)
    found = [(n, pos[key]) for n, key in enumerate(keys) if key in pos]
    if found:
        rows, src = map(list, zip(*found))
        out[rows] = new[src]
    return out, len(keys) - len(found)
