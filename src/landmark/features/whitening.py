"""PCA and PCA-whitening of global descriptors, learned on unlabelled vectors (the index set), and
the supervised learned whitening (Radenovic et al., TPAMI 2018) of labelled ones.

``x -> l2n(P (x - mean))`` with ``P = diag((lambda_i + s)^(-power/2)) U_i^T`` over the ``dim``
leading eigenvectors ``U_i`` of the covariance: ``power=0`` is plain PCA (rotation + reduction),
``power=1`` full whitening (Jegou & Chum 2012), values between damp the small eigenvalues less.
``shrinkage`` ``s`` is a fraction of the mean kept eigenvalue added to every eigenvalue, which
tames the noisy tail when there are few training vectors.

The learned whitening (:func:`learn_labelled_whitening`) first whitens the *within-landmark*
covariance ``S_w`` (``x -> S_w^(-1/2) (x - mean)``: directions in which photos of one landmark vary,
viewpoint, light, clutter, are shrunk), then rotates onto the principal components of the result
and keeps the ``dim`` leading ones (those that vary most between landmarks relative to within).

A learned :class:`Whitening` is saved as a plain ``.npz`` (no pickle) and has a ``digest``; the
store puts it into its signature, so a store refuses queries that were not whitened the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LandmarkError
from ..utils.io import atomic_path


class WhiteningError(LandmarkError, ValueError):
    """A whitening cannot be learned from these vectors, or a whitening file is damaged."""


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@dataclass(frozen=True)
class Whitening:
    """A learned projection: ``apply(x) = l2n((x - mean) @ projection.T)``."""

    mean: np.ndarray  # D, float64
    projection: np.ndarray  # d x D, float64
    eigenvalues: (
        np.ndarray
    )  # d, float64 (of the kept components, descending; learned: after the within-landmark whitening)
    power: float  # learned: 1 (whitened within landmarks)
    shrinkage: float
    kind: str = "pca"  # pca (learn_whitening) | learned (learn_labelled_whitening)
    held_out: tuple[str, ...] = ()  # learned: ids of the labelled photos it was not learned on

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def digest(self) -> str:
        """A short hash of the arrays: two stores agree on a whitening iff their digests agree."""
        h = hashlib.sha256()
        for a in (self.mean, self.projection):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        h.update(f"{self.power}:{self.shrinkage}".encode() + (b"" if self.kind == "pca" else f":{self.kind}".encode()))
        return h.hexdigest()[:16]

    @property
    def signature(self) -> dict[str, Any]:
        sig = {
            "digest": self.digest,
            "in_dim": self.in_dim,
            "dim": self.out_dim,
            "power": self.power,
            "shrinkage": self.shrinkage,
        }
        return sig if self.kind == "pca" else sig | {"kind": self.kind}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Project and re-normalise N x ``in_dim`` vectors to N x ``out_dim`` (float32)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise WhiteningError(f"whitening expects N x {self.in_dim} vectors, got shape {x.shape}")
        if not len(x):
            return np.zeros((0, self.out_dim), np.float32)
        return l2n((x - self.mean.astype(np.float32)) @ self.projection.T.astype(np.float32))

    __call__ = apply

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` atomically (numeric arrays only; loaded with ``allow_pickle=False``)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    mean=self.mean,
                    projection=self.projection,
                    eigenvalues=self.eigenvalues,
                    power=np.float64(self.power),
                    shrinkage=np.float64(self.shrinkage),
                    kind=np.str_(self.kind),
                    held_out=np.array(self.held_out, dtype=np.str_),
                )

    @classmethod
    def load(cls, path: str | Path) -> Whitening:
        try:
            with np.load(path, allow_pickle=False) as z:
                w = cls(
                    z["mean"].astype(np.float64),
                    z["projection"].astype(np.float64),
                    z["eigenvalues"].astype(np.float64),
                    float(z["power"]),
                    float(z["shrinkage"]),
                    str(z["kind"]) if "kind" in z.files else "pca",  # files from before learned whitening
                    tuple(str(i) for i in z["held_out"]) if "held_out" in z.files else (),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise WhiteningError(f"{path}: not a whitening file ({exc})") from None
        if w.projection.ndim != 2 or w.mean.shape != (w.in_dim,):
            raise WhiteningError(f"{path}: inconsistent shapes {w.mean.shape} / {w.projection.shape}")
        return w


def learn_whitening(x: np.ndarray, dim: int | None = 512, *, power: float = 1.0, shrinkage: float = 0.0) -> Whitening:
    """Learn PCA (``power=0``) or PCA-whitening (``power=1``) of the rows of ``x`` down to ``dim``.

    ``dim`` larger than the rank of the centred data (``min(N - 1, D)``) is an error: the extra
    directions would be noise. ``None`` keeps every direction of that rank.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise WhiteningError(f"need at least 2 vectors to learn a whitening, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise WhiteningError("vectors for whitening contain NaN or infinite values")
    if power < 0 or shrinkage < 0:
        raise WhiteningError(f"power and shrinkage must be >= 0, got {power} and {shrinkage}")
    n, d_in = x.shape
    rank = min(n - 1, d_in)
    dim = rank if dim is None else int(dim)
    if not 1 <= dim <= rank:
        raise WhiteningError(f"cannot keep {dim} dimensions: {n} vectors of {d_in} dimensions span at most {rank}")
    mean = x.mean(axis=0)
    xc = x - mean
    # eigenvectors of the covariance from the SVD of the centred data (stable, no D x D product when N < D)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    eig = (s**2) / n
    eig, vt = eig[:dim], vt[:dim]
    # fix the sign of each component so the result does not depend on the LAPACK build
    signs = np.sign(vt[np.arange(dim), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    shrink = shrinkage * float(eig.mean())
    scale = (np.maximum(eig, 1e-12) + shrink) ** (-power / 2.0)
    return Whitening(mean, scale[:, None] * vt, eig, float(power), float(shrinkage))


def learn_labelled_whitening(
    x: np.ndarray, labels: np.ndarray, dim: int | None = 256, *, shrinkage: float = 0.1, held_out: tuple[str, ...] = ()
) -> Whitening:
    """The supervised learned whitening of labelled rows of ``x`` (Radenovic et al.'s L_w), down to ``dim``.

    ``S_w`` is the covariance of the differences of all same-landmark pairs (cirtorch's ``whitenlearn``
    over every matching pair, up to a factor 2): photos around their landmark's mean, each weighted by
    its landmark's number of photos. Its rank is at most the number of photos less the number of
    landmarks; below the dimension it is singular, and ``shrinkage`` (a fraction of its mean
    eigenvalue added to every eigenvalue) must be > 0. ``dim`` is at most the photos less one.
    Rows whose label is negative, and landmarks with a single photo, add nothing to ``S_w``.
    ``held_out`` records the photos kept out for validation (saved with it, read by calibrations).
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    if x.ndim != 2 or len(x) != len(labels):
        raise WhiteningError(f"need one label per vector, got {x.shape} vectors and {labels.shape} labels")
    if not np.isfinite(x).all():
        raise WhiteningError("vectors for whitening contain NaN or infinite values")
    if shrinkage < 0:
        raise WhiteningError(f"shrinkage must be >= 0, got {shrinkage}")
    keep = labels >= 0
    x, labels = x[keep], labels[keep]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if np.sum(counts >= 2) < 2:
        raise WhiteningError("a learned whitening needs at least 2 landmarks with 2 or more labelled photos each")
    n, d_in = x.shape
    rank = min(n - 1, d_in)
    dim = rank if dim is None else int(dim)
    if not 1 <= dim <= rank:
        raise WhiteningError(f"cannot keep {dim} dimensions: {n} vectors of {d_in} dimensions span at most {rank}")
    means = np.zeros((len(classes), d_in))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    # sum over same-landmark pairs of (x_i - x_j)(x_i - x_j)^T = sum over photos of n_c (x_i - mean_c)(...)^T
    weight = counts[inverse].astype(np.float64)
    within = (x - means[inverse]) * np.sqrt(weight)[:, None]
    s_w = within.T @ within / weight.sum()
    lam, u = np.linalg.eigh(s_w)
    lam = np.maximum(lam, 0.0) + shrinkage * float(np.mean(np.maximum(lam, 0.0)))
    if lam.min() <= 1e-12 * max(lam.max(), 1e-300):
        raise WhiteningError(
            f"the within-landmark covariance is singular ({n} photos of {d_in} dimensions): set a shrinkage > 0"
        )
    inv_sqrt = (u / np.sqrt(lam)) @ u.T  # S_w^(-1/2), symmetric
    mean = x.mean(axis=0)
    y = (x - mean) @ inv_sqrt
    eig, v = np.linalg.eigh(y.T @ y / n)
    order = np.argsort(eig)[::-1][:dim]
    eig, v = eig[order], v[:, order]
    signs = np.sign(v[np.abs(v).argmax(axis=0), np.arange(dim)])
    projection = (v * signs).T @ inv_sqrt
    return Whitening(mean, projection, np.maximum(eig, 0.0), 1.0, float(shrinkage), "learned", tuple(held_out))
