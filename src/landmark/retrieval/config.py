"""Config of the retrieval stage: search (:class:`SearchConfig`), spatial re-ranking
(:class:`RerankConfig`), DBA / alpha-QE (:class:`ExpansionConfig`) and the category re-rank
(:class:`CategoryConfig`), with their choices and least values."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.config import check_values


@dataclass
class SearchConfig:
    k: int = 100


@dataclass
class RerankConfig:
    """Spatial-verification re-ranking of the global shortlist (landmark.retrieval.rerank).

    score = global similarity + weight * min(inliers, saturation) / saturation for shortlisted photos
    with at least ``min_inliers`` verified inliers; other photos keep their global similarity.
    ratio, min_inliers, weight and saturation were tuned on leave-one-out queries from ``train``
    (benchmarks/validate_rerank.py), never on test.
    """

    enabled: bool = True  # re-rank when the store has local features
    top_k: int = 100  # global shortlist length that is verified
    ratio: float = 0.8  # Lowe ratio test on descriptor distances
    mutual: bool = True  # keep only mutual nearest neighbours
    model: str = "homography"  # homography | fundamental | affine (OpenCV USAC MAGSAC++)
    threshold: float = 4.0  # RANSAC reprojection threshold in pixels of the extraction frame
    max_iters: int = 1000  # RANSAC iterations
    min_inliers: int = 8  # fewer verified inliers = no boost: no pair of different landmarks reached 8
    #   (8,313 of the train leave-one-out validation, 2,144 of hard-dev's shortlists;
    #   at 6, 215 of them did); the same "verified" as verified_inliers
    weight: float = 0.3  # boost for a fully verified photo
    saturation: int = 20  # inliers at which the boost is full
    verified_inliers: int = 8  # inliers that make "verified same landmark" (DBA / alpha-QE)
    inverted_k: int = 0  # also verify the top-k of the local inverted index (0 = off)
    matcher: str = "mnn"  # mnn (mutual NN + ratio, any kind) | lightglue (aliked, disk) | lighterglue (xfeat)
    #   (retrieval/glue.py); MAGSAC++ on its matches either way
    min_confidence: float = 0.1  # lightglue / lighterglue: matches below this matching score are dropped
    batch_size: int = 0  # lightglue / lighterglue: shortlisted photos per forward pass (0 = auto:
    #   1 on the CPU, where point pruning is faster than batching; 32 elsewhere)
    device: str = "auto"  # lightglue / lighterglue: where the matcher runs
    rotations: tuple[int, ...] = ()  # queries are also verified turned by these degrees (90, 180, 270): photos
    #   taken sideways without EXIF (learned features are not rotation-invariant)


@dataclass
class ExpansionConfig:
    """DBA on the database and alpha-QE on queries (Baidu GLR19 §2.3, eq. (1)-(4))."""

    dba: bool = True  # both on: chosen on the validation split of train
    qe: bool = True  #   (benchmarks/retrieval_validation.py); used by search and evaluate
    shortlist: int = 300  # neighbours among which verified ones are counted (M) and moved up
    verify: str = "vote+threshold"  # how M is found: none | vote | threshold | vote+threshold (same predicted
    #   landmark and similarity above threshold) | inliers (local-feature inliers, DBA only: what calibration
    #   falls back to where the store has too few labelled photos to validate the others)
    threshold: float = 0.5  # cosine similarity above which a neighbour counts as verified (verify=threshold,
    #   vote+threshold); `landmark calibrate` refits it for vote+threshold
    qe_weights: str = "rank"  # rank: (N - x) / N (eq. 4) | alpha: similarity ** alpha
    alpha: float = 3.0
    inlier_k: int = 10  # verify=inliers: the nearest neighbours of each stored photo checked with local features;
    #   rerank.verified_inliers of them make a neighbour verified (the pairs' inliers are kept in STORE/local)
    search_max: int = 20000  # up to this many photos, an exact store expands in memory (DBA: N^2 dot products,
    #   once per store generation; `search` expands it by default); beyond, or compressed, DBA / alpha-QE go
    #   through the index with the augmented vectors of `landmark index expand` (landmark.retrieval.augment)


@dataclass
class CategoryConfig:
    """Classification re-rank of a ranking (Baidu GLR19 §2.2): a query whose top-k labelled neighbours
    hold at most ``max_labels`` landmarks, the voted one with a similarity above ``min_similarity``,
    gets the ranked photos of that landmark first (labelled ones, and unlabelled ones voted to it under
    the same rule), in their order, then the rest."""

    enabled: bool = True  # `landmark calibrate` switches it off where it does not help on validation
    max_labels: int = 2  # the paper's "only two categories" among the top 5
    min_similarity: float = 0.85  # the paper's 0.85; `landmark calibrate` refits it on validation


VERIFICATION_MODELS = ("homography", "fundamental", "affine")  # landmark.retrieval.verification
MATCHERS = ("mnn", "lightglue", "lighterglue")  # landmark.retrieval.glue
VERIFIERS = ("none", "vote", "threshold", "vote+threshold", "inliers")  # landmark.retrieval.expansion
QE_WEIGHTS = ("rank", "alpha")


def check_search(cfg: SearchConfig, where: str = "search") -> None:
    check_values(cfg, {}, {"k": 1}, prefix=f"{where}.")


def check_rerank(cfg: RerankConfig, where: str = "rerank") -> None:
    check_values(
        cfg,
        {"model": VERIFICATION_MODELS, "matcher": MATCHERS},
        {
            "top_k": 1,
            "max_iters": 1,
            "min_inliers": 0,
            "saturation": 1,
            "verified_inliers": 0,
            "inverted_k": 0,
            "batch_size": 0,
        },
        prefix=f"{where}.",
    )


def check_expansion(cfg: ExpansionConfig, where: str = "expansion") -> None:
    check_values(
        cfg,
        {"verify": VERIFIERS, "qe_weights": QE_WEIGHTS},
        {"shortlist": 1, "search_max": 0, "inlier_k": 1},
        prefix=f"{where}.",
    )


def check_category(cfg: CategoryConfig, where: str = "category") -> None:
    check_values(cfg, {}, {"max_labels": 1}, prefix=f"{where}.")
