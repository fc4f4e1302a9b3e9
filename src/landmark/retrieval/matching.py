"""Descriptor matching: mutual nearest neighbours + Lowe's ratio test, as batched matrix products.

Descriptors are first *prepared* as int8 matrices whose inner products give the similarity:

- RootSIFT: unit vectors quantised as ``round(250 * r)`` (components of RootSIFT are below 0.51
  in practice; larger ones are clipped), so ``dot / 250**2`` is the cosine and the squared
  Euclidean distance is ``2 - 2 cos``;
- binary strings (ORB, BRISK): bits as +-1, so ``dot = D - 2 * hamming``;
- learned descriptors (ALIKED, DISK, XFeat: float16 unit vectors, components up to 1) as ``round(127 * d)``.

A query is matched with each candidate by one int8 x int8 -> int32 product of all their
descriptors (``torch._int_mm``, VNNI on CPU; float32 BLAS where it is unavailable); on the
similarity matrix, one row-wise argmax, one masked second max and one column max give the
nearest neighbours, the ratio test and the mutual check - no loop over descriptors. (Stacking
all candidates into one product was measured no faster here: the per-candidate result is
already contiguous for the reductions.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..features.delf import QUANT, decode_descriptors
from ..features.local import BINARY_KINDS, rootsift

_INT_MM: bool | None = None  # torch._int_mm usable here (checked once)


@dataclass
class Prepared:
    """Descriptors of one photo as an int8 tensor ready for matching."""

    mat: torch.Tensor  # N x D int8
    binary: bool = False
    quant: float = QUANT  # int8 value = round(quant * component) (unit-vector descriptors)

    def __len__(self) -> int:
        return int(self.mat.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mat.shape[1])


def prepare(descriptors: np.ndarray, kind: str = "rootsift") -> Prepared:
    """Quantise stored uint8 descriptors (raw SIFT, or packed binary strings) for :func:`match_many`."""
    desc = np.asarray(descriptors)
    if kind in BINARY_KINDS:
        bits = np.unpackbits(desc.astype(np.uint8, copy=False), axis=1).astype(np.int8)
        return Prepared(torch.from_numpy(np.ascontiguousarray(2 * bits - 1)), binary=True)
    quant = QUANT
    if kind == "delf":  # uint8 bytes of unit vectors quantised at QUANT (landmark.features.delf)
        desc = decode_descriptors(desc)
    elif desc.dtype == np.uint8:
        desc = rootsift(desc)
    else:  # learned unit vectors: any component may be large
        quant = 127.0
    q = np.clip(np.rint(desc.astype(np.float32) * quant), -127, 127).astype(np.int8)
    return Prepared(torch.from_numpy(np.ascontiguousarray(q)), binary=False, quant=quant)


def _int_mm_ok() -> bool:
    global _INT_MM
    if _INT_MM is None:
        try:
            a = torch.randint(-127, 127, (32, 64), dtype=torch.int8)
            b = torch.randint(-127, 127, (64, 24), dtype=torch.int8)
            _INT_MM = bool(torch.equal(torch._int_mm(a, b), a.int() @ b.int()))
        except Exception:  # noqa: BLE001 - any failure means: use the float path
            _INT_MM = False
    return _INT_MM


def similarities(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """``a @ b.T`` of int8 matrices as int32 (exact)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.int32)
    if _int_mm_ok() and a.shape[0] > 16:
        return torch._int_mm(a, b.T).numpy()
    return (a.float() @ b.float().T).to(torch.int32).numpy()  # exact: |sums| < 2**24


def _mnn_ratio(
    block: np.ndarray, ratio: float, mutual: bool, binary: bool, dim: int, quant: float = QUANT
) -> np.ndarray:
    """Matches within one similarity block (rows: query descriptors, columns: candidate descriptors).

    The ratio test compares each query descriptor's nearest and second-nearest candidate
    descriptors (Lowe); the mutual check asks the nearest candidate descriptor to pick the same
    query descriptor back. Returns M x 2 int32 ``(query index, candidate index)``. ``block`` is overwritten.
    """
    m, n = block.shape
    if m == 0 or n == 0:
        return np.zeros((0, 2), np.int32)
    rows = np.arange(m)
    best = block.argmax(axis=1)
    s1 = block[rows, best].astype(np.float32)
    keep = np.ones(m, bool)
    if mutual:
        keep &= s1 >= block.max(axis=0)[best]
    if ratio < 1.0 and n > 1:
        block[rows, best] = np.iinfo(block.dtype).min
        s2 = block.max(axis=1).astype(np.float32)
        if binary:  # hamming distances
            keep &= (dim - s1) < ratio * (dim - s2)
        else:  # squared Euclidean distances of unit vectors
            d1 = np.maximum(2.0 - 2.0 * s1 / quant**2, 0.0)
            d2 = np.maximum(2.0 - 2.0 * s2 / quant**2, 0.0)
            keep &= d1 < (ratio * ratio) * d2
    return np.stack([rows[keep], best[keep]], axis=1).astype(np.int32)


def match_many(
    query: Prepared, candidates: Sequence[Prepared], *, ratio: float = 0.9, mutual: bool = True
) -> list[np.ndarray]:
    """Matches of ``query`` with each candidate: a list of M_j x 2 int32 ``(query idx, candidate idx)``."""
    out: list[np.ndarray] = [np.zeros((0, 2), np.int32)] * len(candidates)
    if len(query) == 0:
        return out
    for i, cand in enumerate(candidates):
        if len(cand):
            out[i] = _mnn_ratio(similarities(query.mat, cand.mat), ratio, mutual, query.binary, query.dim, query.quant)
    return out


def match_pair(a: Prepared, b: Prepared, *, ratio: float = 0.9, mutual: bool = True) -> np.ndarray:
    """Matches between two photos: M x 2 int32 ``(index in a, index in b)``."""
    return match_many(a, [b], ratio=ratio, mutual=mutual)[0]
