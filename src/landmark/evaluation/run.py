"""``landmark evaluate``: build the store from a GLDv2-layout dataset, answer its test queries, score them.

Recognition votes among the labelled ``train`` photos; retrieval ranks the ``index`` photos. The
report holds GAP, accuracy and mAP@100 (the GLR/GLDv2 challenge definitions), timings, and the
photos that could not be read; both Kaggle submission files are written beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config, explicit, load_config, merge
from ..data.manifests import DatasetError, Solution, has_gldv2_split, is_gldv2, read_gldv2, read_gldv2_solution
from ..features.extract import REGIONS_EXTRA
from ..features.local import LocalFeatures, extract_many
from ..index.local import LocalStore
from ..metrics import accuracy, global_average_precision, mean_average_precision_at_k
from ..pipeline import Parts, build_store
from ..recognition.calibrate import CALIBRATION_META, calibrate_store, calibrated_views, store_recognition
from ..recognition.pipeline import decide
from ..recognition.setup import calibrated_with_other_priors
from ..retrieval import rank
from ..retrieval.rerank import rerank_test_queries
from ..utils.io import atomic_write_json
from .ablation import gldv2_ablation
from .calibration import (
    CATEGORY_META,
    EXPANSION_META,
    calibrate_category,
    calibrate_expansion,
    calibration_decisions,
    explicit_threshold,
    ranking_settings,
)
from .recognition_ablation import recognition_ablation
from .submission import write_recognition_csv, write_retrieval_csv

log = logging.getLogger(__name__)


def parse_landmark_ids(text: str) -> frozenset[int]:
    """``"900001-900006,42"`` -> those landmark ids (ranges inclusive)."""
    ids: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"not a landmark id or range: {part!r} (expected e.g. 900001-900006,42)") from None
        if b < a:
            raise ValueError(f"empty landmark id range: {part!r}")
        ids.update(range(a, b + 1))
    return frozenset(ids)


def evaluate_gldv2(
    data: str | Path,
    out_dir: str | Path,
    config: Config | None = None,
    *,
    store_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool | None = None,
    retrieval_k: int = 100,
    multiscale: bool = False,
    calibrate: bool | None = None,
    focus: frozenset[int] = frozenset(),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole system on ``data`` and write ``report.json`` and the submissions to ``out_dir``.

    ``focus``: landmark ids whose queries also get their own retrieval figures (``map@K_focus_*``),
    e.g. the hard full-resolution landmarks of gldv2-mini that ``make demo`` names. ``overwrite``
    replaces a store at ``store_dir`` built with another configuration.
    """
    root, out = Path(data), Path(out_dir)
    plan = evaluation_plan(root)  # what can be scored, decided before any work
    config = config or load_config()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for part, why in plan.skipped.items():
        log.warning("%s: %s not scored: %s", root, part, why)

    t0 = time.perf_counter()
    ctx, build = build_store(
        root,
        store_dir or out / "store",
        config,
        splits=plan.splits,
        device=device,
        progress=progress,
        overwrite=overwrite,
    )
    lm = Parts(ctx)
    timings["build_store_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibration = prepare_recognition(lm, config, progress=progress, calibrate=calibrate) if plan.recognition else None
    expansion_calibration = prepare_expansion(lm, config, calibrate=calibrate)
    category_calibration = prepare_category(lm, config, calibrate=calibrate)
    timings["recognition_setup_s"] = time.perf_counter() - t0

    test = read_gldv2(root, "test")
    solution = plan.solution.restricted(test.ids())  # test.csv may list a partial download
    t0 = time.perf_counter()
    # the views recognition reads (object prior, regions) only where recognition is scored
    queries = lm.embedding.embed(
        test, progress=progress, cache_dir=out / "_work" / "extract-test", queries=plan.recognition
    )
    timings["extract_test_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    recognitions, predictions, recognition_rows = [], {}, []
    local_failures: list = []
    if plan.recognition:
        paths = {r.id: r.path for r in test.records}
        detections = lm.recognising.detect([paths[q] for q in queries.ids], progress=progress)
        evidence = lm.recognising.gather(queries.vectors, extras=queries.extras, ids=queries.ids, detections=detections)
        global_only = (
            lm.recognising.gather(
                queries.vectors,
                extras={k: v for k, v in queries.extras.items() if k != REGIONS_EXTRA},
                ids=queries.ids,
                detections=detections,
            )
            if REGIONS_EXTRA in queries.extras
            else None
        )
        if (
            lm.ctx.has_local_features
        ):  # verified inliers with each query's top-k neighbours (evidence against the filters)
            t1 = time.perf_counter()
            query_local, local_failures = test_local_features(lm, test, out / "_work" / "local-test", progress)
            t2 = time.perf_counter()
            lm.recognising.verify_neighbours(evidence, query_local, progress=progress)
            if global_only is not None:
                lm.recognising.verify_neighbours(global_only, query_local, progress=progress)
            query_local.close()
            timings["extract_local_queries_s"] = t2 - t1
            timings["verify_neighbours_s"] = time.perf_counter() - t2
        timings["recognize_s"] = time.perf_counter() - t0 - timings.get("extract_local_queries_s", 0.0)
        recognition_rows = recognition_ablation(
            evidence, lm.ctx.recognition_config, solution.recognition_all, global_only
        )
        recognitions = lm.recognising.recognitions(evidence, decide(evidence, lm.ctx.recognition_config))
        predictions = {
            q: ((r.landmark_id, r.score) if r.landmark_id is not None else None)
            for q, r in zip(queries.ids, recognitions)
        }
    rankings: dict[str, list[str]] = {}
    stage_rankings: dict[str, dict[str, list[str]]] = {}  # the submitted ranking, stage by stage
    global_rankings = reranked_rankings = rankings
    if "index" in plan.splits:
        t0 = time.perf_counter()
        depth = max(retrieval_k, config.rerank.top_k)
        ec = lm.ctx.config.expansion
        plain = rank(lm.ctx.store, queries.vectors, depth, splits=["index"])
        stage_rankings["plain kNN"] = _cut(queries.ids, plain, retrieval_k)
        if ec.dba or ec.qe:  # DBA / alpha-QE (Baidu §2.3) before re-ranking, as `search` does
            expanded = lm.searching.expanded_search(["index"])
            if ec.dba and ec.qe:  # the DBA row alone: the same augmented database, queries not expanded
                stage_rankings["+ DBA"] = _cut(
                    queries.ids, expanded.rank(queries.vectors, retrieval_k, qe=False), retrieval_k
                )
            ranked = expanded.rank(queries.vectors, depth)
            stage_rankings["+ alpha-QE" if ec.qe else "+ DBA"] = _cut(queries.ids, ranked, retrieval_k)
        else:
            ranked = plain
        rankings = {q: r.keys[:retrieval_k] for q, r in zip(queries.ids, ranked)}
        timings["search_s"] = time.perf_counter() - t0
        global_rankings = rankings
        if lm.searching.can_rerank:  # spatial verification of the global shortlist (landmark.retrieval.rerank)
            rankings, rerank_failures, local_timings = rerank_test_queries(
                lm.ctx,
                test,
                {q: (r.keys, r.scores) for q, r in zip(queries.ids, ranked)},
                out / "_work" / "local-test",
                k=retrieval_k,
                progress=progress,
                vectors=dict(zip(queries.ids, queries.vectors)),
                database=lm.ctx.store.keys("index"),
            )
            timings.update(
                {
                    k: v
                    for k, v in local_timings.items()  # its queries' features were
                    if not (k == "extract_local_queries_s" and k in timings)
                }
            )  # extracted above
            local_failures = local_failures or rerank_failures  # the same photos: reported once
            stage_rankings["+ spatial re-rank"] = rankings
        reranked_rankings = rankings
        if lm.ctx.config.category.enabled:  # the query's confidently voted landmark first (Baidu §2.2)
            cats = lm.searching.categories()
            rankings = cats.rerank(rankings, dict(zip(queries.ids, cats.vote(queries.vectors).tolist())))
            stage_rankings["+ category re-rank"] = rankings

    truth = solution.recognition_all
    metrics: dict[str, Any] = {
        "gap": global_average_precision(predictions, truth) if plan.recognition else None,
        "accuracy": accuracy(predictions, truth) if plan.recognition else None,
        f"map@{retrieval_k}": mean_average_precision_at_k(rankings, solution.retrieval, k=retrieval_k)
        if solution.retrieval
        else None,
        "queries": len(test),
        "landmark_queries": sum(1 for v in truth.values() if v),
        "retrieval_queries": len(solution.retrieval),
        "recognition_ablation": recognition_rows,
        "skipped": dict(plan.skipped),
    }
    if solution.retrieval:  # global vs re-ranked, overall and on the focus landmarks
        focused = {q: rel for q, rel in solution.retrieval.items() if truth.get(q, set()) & focus}
        for name, subset in (("", solution.retrieval), ("_focus", focused)):
            if not subset:
                for step in ("global", "reranked", "category"):
                    metrics[f"map@{retrieval_k}{name}_{step}"] = None
                continue
            metrics[f"map@{retrieval_k}{name}_global"] = mean_average_precision_at_k(
                global_rankings, subset, k=retrieval_k
            )
            metrics[f"map@{retrieval_k}{name}_reranked"] = (
                mean_average_precision_at_k(reranked_rankings, subset, k=retrieval_k)
                if reranked_rankings is not global_rankings
                else None
            )
            metrics[f"map@{retrieval_k}{name}_category"] = (
                mean_average_precision_at_k(rankings, subset, k=retrieval_k)
                if rankings is not reranked_rankings
                else None
            )
        metrics["focus_queries"], metrics["focus_landmarks"] = len(focused), sorted(focus)
        metrics["retrieval_stages"] = retrieval_stages(stage_rankings, solution.retrieval, lm.ctx.config, retrieval_k)
    if (
        solution.retrieval
    ):  # Table-1-style ablation: plain kNN, + multi-scale, + PCA-whitening, + DBA, + alpha-QE, + category
        t0 = time.perf_counter()
        metrics["ablation"] = gldv2_ablation(
            lm,
            root,
            queries.ids,
            queries.vectors,
            solution.retrieval,
            work_dir=out / "_work",
            multiscale=multiscale,
            progress=progress,
            k=retrieval_k,
            refit_threshold=calibrate is not False and not explicit_threshold(config),
        )
        timings["ablation_s"] = time.perf_counter() - t0
    submissions = []
    if plan.recognition:
        submissions.append(out / "submission_recognition.csv")
        write_recognition_csv(submissions[-1], predictions, ids=test.ids())
    submissions.append(out / "submission_retrieval.csv")
    write_retrieval_csv(submissions[-1], rankings, ids=test.ids(), k=retrieval_k)
    report = {
        "dataset": str(root),
        "metrics": metrics,
        "timings": timings,
        "store": lm.ctx.store.info() | {"root": str(lm.ctx.store.root)},
        "local_features": lm.ctx.local.info() if lm.ctx.local is not None else None,
        "build": {"added": build.added, "skipped": build.skipped},
        "failures": [asdict(f) for f in build.failures + queries.failures + local_failures],
        "config": config.to_dict(),
        "recognition": {"config": dataclasses.asdict(lm.ctx.recognition_config), "calibration": calibration}
        if plan.recognition
        else None,
        "expansion": {"config": dataclasses.asdict(lm.ctx.config.expansion), "calibration": expansion_calibration},
        "category": {"config": dataclasses.asdict(lm.ctx.config.category), "calibration": category_calibration},
        "calibration_decisions": calibration_decisions(calibration, expansion_calibration, category_calibration),
        "submissions": [str(p) for p in submissions],
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(lm.ctx.extractor.device),
            "threads": torch.get_num_threads(),
        },
        "predictions": {
            q: {
                "landmark_id": r.landmark_id,
                "score": r.score,
                "votes": r.votes,
                "grade": r.grade,
                "neighbours": [[m.id, round(m.score, 4), m.landmark_id] for m in r.neighbours],
                "evidence": r.evidence,
            }
            for q, r in zip(queries.ids, recognitions)
        },
    }
    atomic_write_json(out / "report.json", report)
    return report


def test_local_features(lm: Parts, test, work_dir: Path, progress: bool | None):
    """The test queries' local features, extracted once into ``work_dir`` (resumable; the re-ranking
    reads the same cache), and the photos that could not be read."""
    extractor = lm.ctx.query_local_extractor()
    cache = LocalStore.create(work_dir, extractor.signature)
    done = cache.present(test.ids())

    def sink(keys: list[str], features: list[LocalFeatures]) -> None:
        cache.add(keys, features)

    failures = extract_many(
        extractor,
        [r for r in test.records if r.id not in done],
        sink,
        progress=progress,
        description="local features queries",
    )
    return cache, failures


RETRIEVAL_STAGES = ("plain kNN", "+ DBA", "+ alpha-QE", "+ spatial re-rank", "+ category re-rank")


def _cut(ids: list[str], ranked, k: int) -> dict[str, list[str]]:
    return {q: r.keys[:k] for q, r in zip(ids, ranked)}


def retrieval_stages(
    stage_rankings: dict[str, dict[str, list[str]]], truth: dict[str, list[str]], config: Config, k: int = 100
) -> list[dict[str, Any]]:
    """mAP@k of the submitted ranking after each of its stages (each row adds one stage to the rows
    above; a stage that is off has no mAP and says why); the last row with an mAP is what was submitted."""
    rows: list[dict[str, Any]] = []
    prev = None
    why_off = {
        "+ DBA": "off (expansion.dba)",
        "+ alpha-QE": "off (expansion.qe)",
        "+ spatial re-rank": "off (rerank.enabled, or the store has no local features)",
        "+ category re-rank": "off (category.enabled)",
    }
    ec = config.expansion
    notes = {
        "+ DBA": f"verify={ec.verify}"
        + (f", similarity > {ec.threshold:.2f}" if "threshold" in ec.verify else "")
        + (
            f", >= {config.rerank.verified_inliers} inliers among {ec.inlier_k} nearest"
            if ec.verify == "inliers"
            else ""
        ),
        "+ alpha-QE": f"weights={ec.qe_weights}",
        "+ spatial re-rank": f"{config.rerank.model}, >= {config.rerank.min_inliers} inliers",
        "+ category re-rank": f"best similarity > {config.category.min_similarity:.2f}",
    }
    for stage in RETRIEVAL_STAGES:
        found = stage_rankings.get(stage)
        if found is None:
            rows.append({"stage": stage, "map": None, "delta": None, "note": why_off.get(stage, "")})
            continue
        value = mean_average_precision_at_k(found, truth, k=k)
        rows.append(
            {
                "stage": stage,
                "map": value,
                "delta": None if prev is None else value - prev,
                "note": notes.get(stage, ""),
            }
        )
        prev = value
    return rows


@dataclass(frozen=True)
class EvaluationPlan:
    """What ``landmark evaluate`` can score on a dataset, decided from its files before any work."""

    splits: tuple[str, ...]  # the store's splits: train (when it holds labelled photos) and index
    labelled: bool  # the train split holds labelled photos (calibration has something to fit on)
    recognition: bool  # labelled photos to vote with and a recognition solution to score
    solution: Solution
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why it is not scored


def evaluation_plan(root: str | Path) -> EvaluationPlan:
    """Which parts of ``root`` (a GLDv2-layout dataset) can be evaluated: recognition needs a ``train``
    split with labelled photos and a ``recognition_solution.csv``; retrieval needs an ``index`` split and
    a ``retrieval_solution.csv``. A :class:`DatasetError` when neither can be, so that no store is
    built for nothing."""
    root = Path(root)
    if not is_gldv2(root):
        raise DatasetError(
            f"{root}: not a GLDv2-layout dataset (expected train.csv, index.csv, test.csv and their folders)"
        )
    if not has_gldv2_split(root, "test"):
        raise DatasetError(f"{root}: no test split (test.csv and test/): there are no queries to evaluate")
    solution = read_gldv2_solution(root)
    skipped: dict[str, str] = {}
    labelled = has_gldv2_split(root, "train") and len(read_gldv2(root, "train")) > 0
    has_index = has_gldv2_split(root, "index") and len(read_gldv2(root, "index")) > 0
    if not labelled:
        skipped["recognition"] = (
            "no labelled photos to vote with (train.csv missing or empty); the stages that "
            "only labelled photos can validate are off"
        )
    elif not solution.recognition:
        skipped["recognition"] = "no recognition_solution.csv (or it lists no query)"
    if not has_index:
        skipped["retrieval"] = "no index split (index.csv and index/) to retrieve from"
    elif not solution.retrieval:
        skipped["retrieval"] = "no retrieval_solution.csv (or it lists no query)"
    if len(skipped) == 2:
        raise DatasetError(
            f"{root}: nothing to evaluate: recognition: {skipped['recognition']}; retrieval: {skipped['retrieval']}"
        )
    if "retrieval" in skipped:
        solution = dataclasses.replace(solution, retrieval={})
    splits = tuple(s for s, ok in (("train", labelled), ("index", has_index)) if ok)
    return EvaluationPlan(splits, labelled, "recognition" not in skipped, solution, skipped)


def prepare_recognition(
    lm: Parts, config: Config, *, progress: bool | None = None, calibrate: bool | None = None
) -> dict[str, Any] | None:
    """Object priors for stored photos that lack them, the store's calibrated thresholds (calibrating
    on its train split first if it never was, was on another classifier's priors, or if asked), and the
    user's explicit recognition overrides."""
    lm.recognising.ensure_extras(progress=progress)
    report = lm.ctx.store.meta_value(CALIBRATION_META)
    overrides = explicit(config, "recognition")
    wanted = merge(lm.ctx.store.config.recognition, overrides)
    views = wanted.views  # the thresholds depend on them
    own = views == lm.ctx.store.config.recognition.views  # else the fit serves this run only
    lm.recognising.set_recognition_config(
        dataclasses.replace(lm.ctx.recognition_config, regions=wanted.regions, zoom=wanted.zoom)
    )
    stale = report is not None and (
        calibrated_with_other_priors(lm.ctx.store, lm.ctx.prior_source)
        or calibrated_views(report) != views
        or "decisions" not in report
    )
    if calibrate or (calibrate is None and (report is None or stale)):
        report = calibrate_store(lm.recognising, progress=progress, write=own)  # leaves lm with the fitted thresholds
    base = store_recognition(lm.ctx.store) if own else lm.ctx.recognition_config
    lm.recognising.set_recognition_config(merge(base, overrides))
    return report


def prepare_category(lm: Parts, config: Config, *, calibrate: bool | None = None) -> dict[str, Any] | None:
    """The store's calibrated category re-rank (fitted on its train split first if it never was, was
    fitted with another classifier's priors or after other DBA / alpha-QE settings, or if asked),
    unless ``config`` sets it; ``config.category`` is what ``lm`` uses from now on."""
    lm.searching.set_category_config(config.category)
    if explicit(config, "category"):
        return None
    report = lm.ctx.store.meta_value(CATEGORY_META)
    stale = report is not None and (
        report["validation"].get("prior_source") != lm.ctx.prior_source
        or report["expansion"] != ranking_settings(lm.ctx.config.expansion)
    )
    if calibrate or (calibrate is None and (report is None or stale)):
        return calibrate_category(lm)
    if report is None or stale:
        return None
    lm.searching.set_category_config(
        dataclasses.replace(config.category, enabled=report["enabled"], min_similarity=report["min_similarity"])
    )
    return report


def prepare_expansion(lm: Parts, config: Config, *, calibrate: bool | None = None) -> dict[str, Any] | None:
    """The store's calibrated ``expansion.threshold`` (fitted on its train split first if it never
    was, was fitted with another classifier's priors or for another verifier, or if asked), unless
    ``config`` sets one; ``config.expansion`` is what ``lm`` expands with from now on."""
    lm.searching.set_expansion_config(config.expansion)
    if explicit_threshold(config):
        return None
    report = lm.ctx.store.meta_value(EXPANSION_META)
    stale = report is not None and (
        report["validation"].get("prior_source") != lm.ctx.prior_source
        or report.get("configured", report)["verify"] != config.expansion.verify  # (a safe default keeps the choice)
        or "dba" not in report
    )
    chosen = {k: v for k, v in explicit(config, "expansion").items() if k in ("dba", "qe")}
    if calibrate or (calibrate is None and (report is None or stale)):
        report = calibrate_expansion(lm, write=not chosen)  # a fit after the user's own dba / qe serves this run
    elif report is None or stale:  # --no-calibrate: the configured settings stay
        return None
    else:
        lm.searching.set_expansion_config(
            dataclasses.replace(
                lm.ctx.config.expansion,
                threshold=report["threshold"],
                dba=report["dba"],
                qe=report["qe"],
                verify=report["verify"],
            )
        )
    if chosen:  # the user's own choice wins over calibration's
        lm.searching.set_expansion_config(merge(lm.ctx.config.expansion, chosen))
    return report
