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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from ..config import CategoryConfig, Config, ExpansionConfig, WhiteningConfig
from ..features.pipeline import whitening_in_force
from ..features.whitening import learn_whitening
from ..recognition.knn import voted_labels
from ..retrieval.category import category_first, confident_labels
from ..retrieval.expansion import dba, knn, label_verifier, query_expansion
from .metrics import mean_average_precision_at_k

log = logging.getLogger(__name__)


@dataclass
class Space:
    """Vectors of one descriptor space: the retrieval database and the queries, plus the landmark
    each of them is predicted to show (-1 = none) — the classification verifier of ``verify="vote"`` —
    and, where known, the top-k labelled neighbours behind it (labels, similarities; for the category
    re-rank, whose confidence rule reads them)."""

    index: np.ndarray            # N x D, the database that is ranked
    queries: np.ndarray          # Q x D
    index_pred: np.ndarray       # N, predicted landmark ids
    query_pred: np.ndarray       # Q
    index_votes: tuple[np.ndarray, np.ndarray] | None = None    # (N x k labels, N x k similarities)
    query_votes: tuple[np.ndarray, np.ndarray] | None = None

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Space":
        return dataclasses.replace(self, index=fn(self.index), queries=fn(self.queries))

    @classmethod
    def with_votes(cls, index: np.ndarray, queries: np.ndarray, labelled: np.ndarray, labels: np.ndarray,
                   k: int = 5) -> "Space":
        """Predictions by top-``k`` voting among ``labelled`` photos (what ``landmark recognize`` does)."""
        iv, qv = neighbour_labels(index, labelled, labels, k), neighbour_labels(queries, labelled, labels, k)
        return cls(index, queries, voted_labels(*iv, k), voted_labels(*qv, k), iv, qv)


def whiten(space: Space, wc: WhiteningConfig, source: np.ndarray | None = None
           ) -> tuple[Space, Callable[[np.ndarray], np.ndarray]]:
    """PCA(-whitening) learned on ``source`` (default: ``space.index``, unlabelled), applied to every
    part; returns the new space and the transform."""
    source = space.index if source is None else source
    dim = min(wc.dim, source.shape[1], len(source) - 1)
    w = learn_whitening(source, dim, power=wc.power, shrinkage=wc.shrinkage)
    return space.map(w.apply), w.apply


def neighbour_labels(vectors: np.ndarray, labelled: np.ndarray, labels: np.ndarray, k: int = 5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and similarities (each N x k, -1 / -inf where missing) of each vector's top-``k`` labelled photos."""
    if not len(labelled) or not len(vectors):
        return np.full((len(vectors), k), -1, np.int64), np.full((len(vectors), k), -np.inf, np.float32)
    sims, idx = knn(vectors, labelled, k)
    return np.where(idx >= 0, np.asarray(labels)[np.clip(idx, 0, None)], -1), sims


def category_ranks(ranks: np.ndarray, space: Space, cfg: CategoryConfig) -> np.ndarray:
    """``ranks`` (Q x k database indices, -1 = none) with each query's confident landmark first
    (Baidu §2.2, :func:`landmark.retrieval.category.category_first`)."""
    if space.index_votes is None or space.query_votes is None:
        raise ValueError("the category re-rank needs the labelled neighbours of the space (Space.with_votes)")
    k = space.query_votes[0].shape[1]
    q_lab = confident_labels(*space.query_votes, cfg, k)
    d_lab = confident_labels(*space.index_votes, cfg, k)
    out = np.full_like(ranks, -1)
    for i, row in enumerate(ranks):
        row = row[row >= 0]
        out[i, :len(row)] = row[category_first(row, int(q_lab[i]), d_lab[row])]
    return out


def retrieve(space: Space, ec: ExpansionConfig, *, dba_on: bool, qe_on: bool, k: int = 100) -> np.ndarray:
    """Q x k database indices after optional DBA and alpha-QE (M from ``ec.verify``)."""
    return retrieve_scored(space, ec, dba_on=dba_on, qe_on=qe_on, k=k)[1]


def retrieve_scored(space: Space, ec: ExpansionConfig, *, dba_on: bool, qe_on: bool, k: int = 100
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, database indices), each Q x k, after optional DBA and alpha-QE."""
    db = space.index
    db_labels, q_labels = space.index_pred, space.query_pred
    if dba_on:
        db = dba(db, label_verifier(ec, db_labels, db_labels), shortlist=ec.shortlist)
    q = space.queries
    if qe_on:
        q = query_expansion(q, db, label_verifier(ec, q_labels, db_labels), shortlist=ec.shortlist,
                            weights=ec.qe_weights, alpha=ec.alpha)
    return knn(q, db, k)


def ablation(base: Space, score: Callable[[np.ndarray], float], config: Config, *,
             multiscale: Space | None = None, multiscale_note: str = "not run (landmark evaluate --multiscale)",
             k: int = 100,
             refit: Callable[[Callable[[np.ndarray], np.ndarray]], ExpansionConfig] | None = None
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
        rows.append({"step": step, "map": value, "delta": None if value is None or prev is None else value - prev,
                     "note": note})

    noexp = dict(dba_on=False, qe_on=False, k=k)
    add("plain kNN", score(retrieve(base, config.expansion, **noexp)))
    space = base
    if multiscale is not None:
        space = multiscale
        add("+ multi-scale", score(retrieve(space, config.expansion, **noexp)), multiscale_note)
    else:
        add("+ multi-scale", None, multiscale_note)
    ec = config.expansion
    if config.whitening.kind in ("none", "auto"):     # auto: gldv2_ablation says which; here, not whitened
        wc = config.whitening
        space, transform = whiten(space, wc)
        add("+ PCA-whitening", score(retrieve(space, config.expansion, **noexp)),
            f"dim {min(wc.dim, base.index.shape[1])}, power {wc.power}, shrinkage {wc.shrinkage}")
        ec = refit(transform) if refit is not None else ec
    else:
        add("+ PCA-whitening", None, "already in the store's vectors" if config.whitening.kind == "pca"
            else f"the store's vectors are whitened already ({config.whitening.kind})")
    verify = f"verify={ec.verify}" + (f" (similarity > {ec.threshold:.2f})" if "threshold" in ec.verify else "")
    if not (ec.dba or ec.qe):    # calibration switched them off: these rows say what they would have done
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
        add("+ category re-rank", score(category_ranks(expanded, space, cc)),
            f"top-{space.query_votes[0].shape[1]} with <= {cc.max_labels} landmarks, "
            f"best similarity > {cc.min_similarity:.2f}")
    return rows


# -- validation split from train -----------------------------------------------------------------
def validation_split(keys: Sequence[str], labels: Sequence[int], seed: int = 0,
                     held: Sequence[bool] | None = None) -> tuple[list[int], list[int], list[int]]:
    """Per landmark, shuffled photos dealt round-robin into (vote, database, query) positions.

    ``held`` marks photos a trained model never trained on: then the others all vote (as the
    trained-on ``train`` photos do on test) and the held ones are dealt into (database, query), so
    that only photos the model never saw are retrieved and searched for, as on test.
    """
    rng = np.random.default_rng(seed)
    folds: tuple[list[int], list[int], list[int]] = ([], [], [])
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(int(lab), []).append(i)
    for lab in sorted(by_label):
        idx = [int(i) for i in rng.permutation(by_label[lab])]
        if held is None:
            for j, i in enumerate(idx):
                folds[j % 3].append(i)
            continue
        folds[0].extend(i for i in idx if not held[i])
        for j, i in enumerate(i for i in idx if held[i]):
            folds[1 + j % 2].append(i)
    return folds


def validation_space(train: np.ndarray, labels: np.ndarray, seed: int = 0, negatives: np.ndarray | None = None,
                     k: int = 5, held: Sequence[bool] | None = None) -> tuple[Space, Callable[[np.ndarray], float]]:
    """A :class:`Space` and scorer for held-out train photos (whitened by the caller, if at all).

    ``negatives`` (known non-landmark photos) join the database after the landmark photos, relevant
    to no query. ``held``: photos a trained model never saw (see :func:`validation_split`).
    """
    vote, db, qs = validation_split([str(i) for i in range(len(labels))], np.asarray(labels).tolist(), seed, held)
    labels = np.asarray(labels)
    database, db_labels = train[db], labels[db]
    if negatives is not None and len(negatives):
        database = np.concatenate([database, np.asarray(negatives, database.dtype)])
        db_labels = np.concatenate([db_labels, np.full(len(negatives), -1, db_labels.dtype)])
    space = Space.with_votes(database, train[qs], train[vote], labels[vote], k)
    q_labels = labels[qs]
    rankings_truth = {str(i): [str(j) for j in np.flatnonzero(db_labels == q_labels[i])] for i in range(len(qs))}

    def score(ranks: np.ndarray) -> float:
        return mean_average_precision_at_k({str(i): [str(j) for j in r if j >= 0] for i, r in enumerate(ranks)},
                                           rankings_truth, k=100)
    return space, score


GRID: Mapping[str, Sequence[Any]] = {
    "whitening.dim": (128, 256, 512),
    "whitening.power": (0.0, 0.25, 0.5, 1.0),
    "whitening.shrinkage": (0.0, 0.1, 0.5),
    "expansion.verify": ("none", "vote", "threshold", "vote+threshold"),
    "expansion.threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "expansion.qe_weights": ("rank", "alpha"),
}


def tune_on_validation(train: np.ndarray, labels: np.ndarray, index: np.ndarray, config: Config,
                       seed: int = 0, negatives: np.ndarray | None = None) -> dict[str, Any]:
    """Pick whitening and expansion settings by mAP@100 on held-out train photos (two stages);
    ``negatives``: known non-landmarks added to the validation database."""
    space, score = validation_space(train, labels, seed, negatives)
    ec = config.expansion
    results: list[dict[str, Any]] = []
    plain = score(retrieve(space, ec, dba_on=False, qe_on=False))
    best_w, best_w_map = None, -1.0
    for dim, power, shrink in itertools.product(GRID["whitening.dim"], GRID["whitening.power"], GRID["whitening.shrinkage"]):
        if power == 0.0 and shrink > 0:
            continue
        wc = dataclasses.replace(config.whitening, dim=dim, power=power, shrinkage=shrink)
        m = score(retrieve(whiten(space, wc, index)[0], ec, dba_on=False, qe_on=False))
        results.append({"whitening": dataclasses.asdict(wc), "map": m})
        if m > best_w_map + 1e-9:
            best_w, best_w_map = wc, m
    white = whiten(space, best_w, index)[0]
    best_e, best_e_map = None, -1.0
    for verify, qe_w in itertools.product(GRID["expansion.verify"], GRID["expansion.qe_weights"]):
        for thr in (GRID["expansion.threshold"] if "threshold" in verify else (ec.threshold,)):
            e = dataclasses.replace(ec, verify=verify, qe_weights=qe_w, threshold=thr)
            m = score(retrieve(white, e, dba_on=True, qe_on=True))
            results.append({"expansion": dataclasses.asdict(e), "map": m})
            if m > best_e_map + 1e-9:
                best_e, best_e_map = e, m
    return {"plain": plain, "whitening": dataclasses.asdict(best_w), "whitening_map": best_w_map,
            "expansion": dataclasses.asdict(best_e), "expansion_map": best_e_map, "trials": results,
            "sizes": {"database": len(space.index), "queries": len(space.queries)}}


EXPANSION_META = "expansion_calibration"
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(18))     # 0 (agreement alone, in practice) .. 0.85


def fit_threshold(space: Space, score: Callable[[np.ndarray], float], ec: ExpansionConfig,
                  thresholds: Sequence[float] = THRESHOLDS) -> tuple[ExpansionConfig, list[dict[str, float]]]:
    """``ec`` with the similarity threshold of its verifier under which its DBA / alpha-QE score best
    on ``space`` (ties: the lowest), and every trial; ``ec`` unchanged where nothing reads a threshold."""
    if "threshold" not in ec.verify or not (ec.dba or ec.qe):
        return ec, []
    best, best_map, trials = ec, -1.0, []
    for t in thresholds:
        e = dataclasses.replace(ec, threshold=float(t))
        m = score(retrieve(space, e, dba_on=ec.dba, qe_on=ec.qe))
        trials.append({"threshold": float(t), "map": m})
        if m > best_map + 1e-9:
            best, best_map = e, m
    return best, trials


class Validation(NamedTuple):
    """A store's validation space, its mAP@100 scorer, its number of known non-landmarks, and how
    its photos were split (``"held out by the model"``, ``"held out by the learned whitening"`` or ``"by photo"``)."""
    space: Space
    score: Callable[[np.ndarray], float]
    negatives: int
    split: str


def store_validation(lm, transform: Callable[[np.ndarray], np.ndarray] | None = None, *,
                     train_ids: Sequence[str] | None = None, seed: int = 0
                     ) -> Validation | None:
    """:func:`validation_space` of a store's labelled photos (of ``train_ids`` only, if given), with
    its known non-landmarks in the database, after ``transform``; None without a validation query.
    For a store of a model from ``landmark train``, the photos that model held out are the database
    and the queries, and the photos it trained on vote (unless that gives fewer than
    ``MIN_HELD_QUERIES`` queries that can find their landmark)."""
    from ..recognition.calibrate import held_out_by_whitening, held_out_label, model_validation_ids

    store = lm.store
    wanted = set(train_ids) if train_ids is not None else None
    rows = store.get(store.keys())
    keys = [k for k, r in rows.items() if r.landmark_id is not None and (wanted is None or k in wanted)]
    if not keys:
        return None
    labels = np.array([rows[k].landmark_id for k in keys], np.int64)
    held_ids = model_validation_ids(store, keys, seed)
    held = [k in held_ids for k in keys] if held_ids else None
    if held is not None and answerable_queries(keys, labels, seed, held) < MIN_HELD_QUERIES:
        if held_out_by_whitening(store) is not None:   # the others taught the whitening: never validate on them
            log.warning("the photos the store's learned whitening held out give fewer than %d validation queries "
                        "with a photo of their landmark to find: the retrieval calibration is noisy", MIN_HELD_QUERIES)
        else:
            log.warning("the photos the store's model held out give fewer than %d validation queries with a photo "
                        "of their landmark to find (a landmark needs 2 of them): the retrieval calibration splits "
                        "all labelled photos instead", MIN_HELD_QUERIES)
            held = None
    _, negatives = lm.recognizer.known_non_landmarks(lm.recognition_config)
    transform = transform or (lambda x: x)
    space, score = validation_space(transform(store.vectors(keys)), labels, seed,
                                    transform(negatives) if len(negatives) else None, k=lm.recognition_config.k,
                                    held=held)
    if not len(space.queries):
        return None
    return Validation(space, score, len(negatives), held_out_label(store) if held else "by photo")


MIN_HELD_QUERIES = 10     # a split of a model's held-out photos answering fewer is not used


def answerable_queries(keys: Sequence[str], labels: np.ndarray, seed: int, held: Sequence[bool] | None) -> int:
    """How many queries of :func:`validation_split` have a database photo of their landmark."""
    _, db, qs = validation_split(keys, np.asarray(labels).tolist(), seed, held)
    in_db = {int(labels[i]) for i in db}
    return sum(int(labels[i]) in in_db for i in qs)


MIN_VALIDATION_QUERIES = 30    # fewer validation queries than this cannot tell a stage that helps from noise


def too_few_to_validate(validation: Validation | None) -> str | None:
    """Why ``validation`` cannot decide whether a retrieval stage helps (None: it can): no labelled
    photos, or fewer than :data:`MIN_VALIDATION_QUERIES` queries (e.g. one photo per landmark)."""
    if validation is None:
        return "no labelled photos with a second photo of their landmark to validate on"
    n = len(validation.space.queries)
    if n < MIN_VALIDATION_QUERIES:
        return f"{n} validation queries (fewer than {MIN_VALIDATION_QUERIES}: too few labelled photos per landmark)"
    return None


def _validation_info(found: Validation | None, seed: int, prior_source: str) -> dict[str, Any]:
    """What a calibration report says of the validation split it had (or did not have)."""
    if found is None:
        return {"database_photos": 0, "queries": 0, "known_non_landmarks": 0, "split": "none", "seed": seed,
                "prior_source": prior_source}
    return {"database_photos": len(found.space.index), "queries": len(found.space.queries),
            "known_non_landmarks": found.negatives, "split": found.split, "seed": seed, "prior_source": prior_source}


def calibrate_expansion(lm, *, train_ids: Sequence[str] | None = None, seed: int = 0, write: bool = True,
                        validation: Validation | None = None) -> dict[str, Any] | None:
    """Decide DBA / alpha-QE for ``lm``'s store on its validation split with its known non-landmarks,
    in the space the store searches: refit ``expansion.threshold`` (verify ``vote+threshold`` /
    ``threshold``), and switch both off where expanding scores below plain kNN on validation, or where
    the store has too few labelled photos to tell (:func:`too_few_to_validate`: then off is the
    default that cannot hurt, and the report says so). Used from now on and, if ``write``, kept in the
    store (only when the store's own ``expansion.verify`` is the one it was decided for). None where
    the configuration expands nothing. ``validation``: the :func:`store_validation` of these
    ``train_ids`` / ``seed``, if already made."""
    ec = lm.config.expansion
    if not (ec.dba or ec.qe):
        return None
    found = validation or store_validation(lm, train_ids=train_ids, seed=seed)
    why = too_few_to_validate(found)
    report: dict[str, Any] = {"verify": ec.verify, "threshold": ec.threshold, "trials": []}
    if why is not None:
        fitted = dataclasses.replace(ec, dba=False, qe=False)
        report |= {"dba": False, "qe": False, "decision": f"DBA and alpha-QE off (safe default): {why}",
                   "validation": _validation_info(found, seed, lm.prior_source)}
    else:
        space, score = found.space, found.score
        plain = score(retrieve(space, ec, dba_on=False, qe_on=False))
        fitted, trials = fit_threshold(space, score, ec)
        expanded = max(t["map"] for t in trials) if trials else score(retrieve(space, ec, dba_on=ec.dba, qe_on=ec.qe))
        helps = expanded >= plain
        if not helps:
            fitted = dataclasses.replace(fitted, dba=False, qe=False)
        report |= {"threshold": fitted.threshold, "dba": fitted.dba, "qe": fitted.qe,
                   "validation_map": expanded, "validation_map_plain": plain, "trials": trials,
                   "decision": (f"on: validation mAP@100 {plain:.4f} -> {expanded:.4f}" if helps else
                                f"off: it lowered validation mAP@100 {plain:.4f} -> {expanded:.4f}"),
                   "validation": _validation_info(found, seed, lm.prior_source)}
    lm.set_expansion_config(fitted)
    store = lm.store
    if write and store.config.expansion.verify == ec.verify:
        store.update_config(dataclasses.replace(
            store.config, expansion=dataclasses.replace(store.config.expansion, threshold=fitted.threshold,
                                                        dba=fitted.dba, qe=fitted.qe)))
        store.set_meta_value(EXPANSION_META, report)
    return report


CATEGORY_META = "category_calibration"


def ranking_settings(ec: ExpansionConfig) -> dict[str, Any]:
    """The DBA / alpha-QE settings a category calibration was fitted after (its staleness key)."""
    return {k: getattr(ec, k) for k in ("dba", "qe", "verify", "threshold")}


SIMILARITIES = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))     # 0.3 .. 0.95


def fit_category(space: Space, score: Callable[[np.ndarray], float], ranks: np.ndarray, cc: CategoryConfig,
                 similarities: Sequence[float] = SIMILARITIES) -> tuple[CategoryConfig, list[dict[str, float]], float]:
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
    return (dataclasses.replace(cc, enabled=bool(best["map"] > before + 1e-9), min_similarity=best["min_similarity"]),
            trials, before)


def calibrate_category(lm, *, train_ids: Sequence[str] | None = None, seed: int = 0, write: bool = True,
                       validation: Validation | None = None) -> dict[str, Any] | None:
    """Refit the category re-rank (on/off, ``min_similarity``) of ``lm``'s store on its validation
    split with its known non-landmarks, after DBA / alpha-QE as ``lm`` expands; use it from now on
    and, if ``write``, keep it in the store. None without labelled photos. ``validation``: as for
    :func:`calibrate_expansion`."""
    found = validation or store_validation(lm, train_ids=train_ids, seed=seed)
    ec = lm.config.expansion
    why = too_few_to_validate(found)
    if why is not None:       # the re-rank trusts votes that nothing here can check: off
        fitted = dataclasses.replace(lm.config.category, enabled=False)
        report = {"enabled": False, "min_similarity": fitted.min_similarity, "trials": [],
                  "decision": f"off (safe default): {why}", "expansion": ranking_settings(ec),
                  "validation": _validation_info(found, seed, lm.prior_source)}
    else:
        space, score = found.space, found.score
        fitted, trials, before = fit_category(space, score, retrieve(space, ec, dba_on=ec.dba, qe_on=ec.qe),
                                              lm.config.category)
        after = max([before] + [t["map"] for t in trials])
        report = {"enabled": fitted.enabled, "min_similarity": fitted.min_similarity, "validation_map_before": before,
                  "validation_map": after, "trials": trials, "expansion": ranking_settings(ec),
                  "decision": (f"on: validation mAP@100 {before:.4f} -> {after:.4f}" if fitted.enabled else
                               "off: no similarity threshold raised validation mAP@100"),
                  "validation": _validation_info(found, seed, lm.prior_source)}
    lm.set_category_config(fitted)
    store = lm.store
    if write and ranking_settings(store.config.expansion) == report["expansion"]:
        # a fit after other DBA / alpha-QE settings than the store's own serves that run only
        store.update_config(dataclasses.replace(store.config, category=fitted))
        store.set_meta_value(CATEGORY_META, report)
    return report


def calibration_decisions(recognition: Mapping[str, Any] | None, expansion: Mapping[str, Any] | None,
                          category: Mapping[str, Any] | None) -> dict[str, str]:
    """Which stages calibration switched on or off and why, one line each, from its three reports
    (a run's, for ``landmark evaluate``; a store's kept ones, :func:`store_calibration_decisions`);
    stages never calibrated are left out."""
    out = {f"recognition.{stage}": why for stage, why in ((recognition or {}).get("decisions") or {}).items()}
    if (expansion or {}).get("decision"):
        out["expansion (DBA, alpha-QE)"] = expansion["decision"]
    if (category or {}).get("decision"):
        out["category re-rank"] = category["decision"]
    return out


def store_calibration_decisions(store) -> dict[str, str]:
    """:func:`calibration_decisions` of the reports a store keeps (``landmark index info``)."""
    from ..recognition.calibrate import CALIBRATION_META

    return calibration_decisions(store.meta_value(CALIBRATION_META), store.meta_value(EXPANSION_META),
                                 store.meta_value(CATEGORY_META))


# -- the ablation of `landmark evaluate` on a GLDv2-layout dataset ---------------------------------
def store_space(lm, query_vectors: np.ndarray) -> tuple[Space, list[str]]:
    """The store's ``index`` photos and the queries, with top-k vote predictions from its ``train`` photos."""
    store, config = lm.store, lm.store.config
    index_keys, train_keys = store.keys("index"), store.keys("train")
    rows = store.get(train_keys)
    labels = np.array([rows[t].landmark_id for t in train_keys], np.int64)
    space = Space.with_votes(store.vectors(index_keys), query_vectors, store.vectors(train_keys), labels,
                             config.recognition.k)
    return space, index_keys


MULTISCALE = (0.7071, 1.0, 1.4142)


def gldv2_ablation(lm, data, query_ids: Sequence[str], query_vectors: np.ndarray,
                   retrieval_truth: Mapping[str, Sequence[str]], *, work_dir, multiscale: bool = False,
                   progress: bool | None = None, k: int = 100, refit_threshold: bool = True) -> list[dict[str, Any]]:
    """Rows of the ablation for a store built from ``train`` + ``index`` and its test queries.

    The store's own vectors and the cached query vectors give every row but multi-scale, which
    extracts ``index`` and ``test`` again at scales 1/sqrt(2), 1, sqrt(2) (``multiscale=True``).
    ``refit_threshold``: fit the expansion threshold again on validation after the PCA row (off:
    the user chose it, or calibration was switched off).
    """
    from pathlib import Path

    from ..data.manifests import read_gldv2
    from ..features.pipeline import base_extractor

    wc = lm.store.config.whitening
    config = dataclasses.replace(lm.store.config, expansion=lm.config.expansion,   # what evaluate searches with
                                 category=lm.config.category,
                                 whitening=dataclasses.replace(wc, kind=whitening_in_force(lm.store.config, lm.store.root)))
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
        ex = base_extractor(cfg, device=str(lm.extractor.device))
        work = Path(work_dir)
        idx = ex.extract(read_gldv2(data, "index").records, cache_dir=work / "ms-index", progress=progress,
                         description="extract index (multi-scale)")
        test = ex.extract(read_gldv2(data, "test").records, cache_dir=work / "ms-test", progress=progress,
                          description="extract test (multi-scale)")
        # a photo the multi-scale pass could not read keeps its single-scale vector (rows stay aligned)
        index_ms, missing_i = _replace_rows(base.index, index_keys, idx.ids, idx.vectors)
        queries_ms, missing_q = _replace_rows(base.queries, list(query_ids), test.ids, test.vectors)
        ms_space = dataclasses.replace(base, index=index_ms, queries=queries_ms)
        ms_note = (f"{missing_i} index / {missing_q} query photos unreadable there kept their single-scale vectors"
                   if missing_i or missing_q else "")

    def refit(transform: Callable[[np.ndarray], np.ndarray]) -> ExpansionConfig:
        found = store_validation(lm, transform)
        return fit_threshold(*found[:2], config.expansion)[0] if found is not None else config.expansion

    return ablation(base, score, config, multiscale=ms_space, multiscale_note=ms_note, k=k,
                    refit=refit if refit_threshold else None)


def _replace_rows(vectors: np.ndarray, keys: Sequence[str], ids: Sequence[str], new: np.ndarray) -> tuple[np.ndarray, int]:
    """``vectors`` (rows named by ``keys``) with each row found in ``ids`` replaced by its row of
    ``new``; and how many were not found."""
    pos = {i: n for n, i in enumerate(ids)}
    out = np.array(vectors, dtype=np.float32, copy=True)
    found = [(n, pos[key]) for n, key in enumerate(keys) if key in pos]
    if found:
        rows, src = map(list, zip(*found))
        out[rows] = new[src]
    return out, len(keys) - len(found)
