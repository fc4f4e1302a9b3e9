"""Local-feature inliers between stored photos and their nearest stored neighbours, kept in the local store.

DBA verified by local features (``expansion.verify="inliers"``) needs, for each stored photo, the
inliers with each of its ``expansion.inlier_k`` nearest neighbours. Verifying them costs about a
millisecond a pair, so they are kept in ``STORE/local`` under a tag of the verifier's settings and
only pairs not verified before (new photos, changed settings) are verified again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from ..utils.progress import progress_bar
from .rerank import Verifier

# the settings that change a pair's inlier count (the others only change how it is used)
_TAGGED = ("ratio", "mutual", "model", "threshold", "max_iters", "matcher", "min_confidence")


def verifier_tag(verifier: Verifier) -> str:
    """A short digest of what a verification depends on: the local kind and the matching settings."""
    settings = {k: v for k, v in asdict(verifier.cfg).items() if k in _TAGGED} | {"kind": verifier.kind}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def stored_pair_inliers(
    verifier: Verifier,
    keys: Sequence[str],
    neighbours: Sequence[Sequence[str]],
    *,
    progress: bool | None = None,
) -> np.ndarray:
    """Inliers of each stored photo ``keys[i]`` with each of its stored ``neighbours[i]``: len(keys) x
    the longest list, int32; padding -1, a photo itself 0, a photo without local features 0."""
    width = max((len(n) for n in neighbours), default=0)
    out = np.full((len(keys), width), -1, np.int32)
    tag = verifier_tag(verifier)
    wanted = [(a, b) for a, nb in zip(keys, neighbours) for b in nb if b != a]
    kept = verifier.local.pair_inliers(wanted, tag)
    new: dict[tuple[str, str], int] = {}
    todo = [i for i, (a, nb) in enumerate(zip(keys, neighbours)) if any(b != a and (a, b) not in kept for b in nb)]
    with progress_bar("verify stored neighbours", total=len(todo), enabled=progress) as bar:
        for i in todo:
            a = keys[i]
            missing = [b for b in dict.fromkeys(neighbours[i]) if b != a and (a, b) not in kept]
            got = verifier.stored([a])[0]
            counts = (
                [v.inliers for v in verifier.verify(got[0], missing, prepared=got[1])] if got else [0] * len(missing)
            )
            new.update({(a, b): int(n) for b, n in zip(missing, counts)})
            bar.advance(1)
    if new:
        verifier.local.keep_pair_inliers(new, tag)
    found = kept | new
    for i, (a, nb) in enumerate(zip(keys, neighbours)):
        out[i, : len(nb)] = [0 if b == a else found.get((a, b), 0) for b in nb]
    return out
