"""Config of the index stage (:class:`IndexConfig`): exact or compressed (IVF-PQ) search."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.config import check_values


@dataclass
class IndexConfig:
    kind: str = "flat"  # exact inner-product search | ivfpq (compressed, see index/ann.py)
    nlist: int = 0  # ivfpq: coarse cells (0 = about 4 * sqrt(N) at training time)
    pq_m: int = 64  # ivfpq: bytes per PQ code (2 * pq_m sub-quantizers of 4 bits)
    pca_dim: int = 0  # ivfpq: PCA-rotate to this many dims before coding; 0 = the fewest that hold
    # pca_energy of the training vectors' variance (all dims, randomly rotated,
    # when no fewer do, e.g. whitened vectors)
    pca_energy: float = 0.85  # ivfpq: see pca_dim (1.0 = always all dims)
    residual: bool = True  # ivfpq: code each vector's residual from its cell centre (finer codes, a shorter
    # exact re-rank for the same recall; off = one lookup table per query, not per cell)
    nprobe: int = 0  # ivfpq: cells visited per query (0 = about 7 % of nlist, as nlist grows)
    rerank: int = 1000  # shortlist re-ranked with the full vectors (memory-mapped on disk); 0 = off
    vectors_dtype: str = "float16"  # ivfpq: the full vectors on disk for the re-rank: float16 (half the bytes read
    # per candidate, scores within ~1e-4 of float32) | float32
    train_min: int = 50_000  # a compressed store stays exact until it holds this many vectors


KINDS = ("flat", "ivfpq")  # landmark.index.ann
VECTOR_DTYPES = ("float16", "float32")
MINIMUMS = {"nlist": 0, "pq_m": 1, "pca_dim": 0, "nprobe": 0, "rerank": 0, "train_min": 0}


def check_index(cfg: IndexConfig, where: str = "index") -> None:
    check_values(cfg, {"kind": KINDS, "vectors_dtype": VECTOR_DTYPES}, MINIMUMS, prefix=f"{where}.")
