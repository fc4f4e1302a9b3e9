"""Learned whitening (``whitening.kind=learned``): its dim and shrinkage on a validation split of train.

    python benchmarks/learned_whitening_validation.py runs/demo/store [--dims 64,128,256,512] [--shrinkage 0.02,0.05,0.1,0.2]

The store is an un-whitened one holding the train split (labelled) and, for known non-landmarks, the
index split (`make demo` builds one). The validation photos are those its trained model held out, else
the split by photo that `landmark calibrate` makes (15 % per landmark, seed 0); the whitening is
learned on the other labelled photos. Half of the store's known non-landmarks (photos its object
prior flags) join the retrieval database, the other half are non-landmark queries. For each setting:

* kNN wrong: validation photos the top-5 vote among the training photos gets wrong;
* kNN GAP: the GAP of that vote over the validation photos and the non-landmark queries (scored by
  similarity; a space where non-landmarks come closer to landmark photos costs here);
* mAP@100: each validation photo searching the other validation photos and the other half of the
  non-landmarks (leave-one-out: photos the whitening was learned on would flatter it, since their
  own within-landmark variation is what it removed).

Never reads the test split or a solution file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import landmark
from landmark.data.manifests import ImageRecord
from landmark.data.splits import split_by_photo
from landmark.features.whitening import l2n, learn_labelled_whitening
from landmark.metrics import global_average_precision, mean_average_precision_at_k
from landmark.recognition.holdout import VAL_FRACTION, model_validation_ids
from landmark.recognition.knn import knn_vote


def scores(transform, held, train, held_labels, train_labels, neg_db, neg_q) -> tuple[int, float, float]:
    q, db, nq = transform(held), transform(train), transform(neg_q)
    queries = np.concatenate([q, nq])
    sims = queries @ db.T
    top = np.argsort(-sims, axis=1)[:, :5]
    votes = knn_vote(train_labels[top], np.take_along_axis(sims, top, 1), 5)
    truth = {i: (int(held_labels[i]) if i < len(q) else None) for i in range(len(queries))}
    gap = global_average_precision({i: (v.landmark_id, v.score) for i, v in enumerate(votes)}, truth)
    wrong = sum(votes[i].landmark_id != held_labels[i] for i in range(len(q)))
    database = np.concatenate([q, transform(neg_db)])
    sims = q @ database.T
    sims[np.arange(len(q)), np.arange(len(q))] = -np.inf  # not itself
    ranks = np.argsort(-sims, axis=1)[:, :100]
    rel = {i: [str(j) for j in np.flatnonzero(held_labels == held_labels[i]) if j != i] for i in range(len(q))}
    rel = {i: r for i, r in rel.items() if r}
    m = mean_average_precision_at_k({i: [str(j) for j in ranks[i]] for i in rel}, rel, k=100)
    return wrong, gap, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--dims", default="64,128,256,512")
    ap.add_argument("--shrinkage", default="0.02,0.05,0.1,0.2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = landmark.open(args.store)
    st = lm.store
    if st.config.whitening.kind != "none":
        raise SystemExit(f"{args.store} is whitened already: give an un-whitened store")
    keys = [k for k in st.keys("train")]
    rows = st.get(keys)
    keys = [k for k in keys if rows[k].landmark_id is not None]
    held_ids = model_validation_ids(st, keys, args.seed)
    if not held_ids:
        records = [ImageRecord(k, Path(rows[k].path or k), rows[k].landmark_id) for k in keys]
        held_ids = {r.id for r in split_by_photo(records, VAL_FRACTION, 2, args.seed).val}
    held = [k for k in keys if k in held_ids]
    train = [k for k in keys if k not in held_ids]
    _, negatives = lm.recognising.recognizer.known_non_landmarks()
    order = np.random.default_rng(args.seed).permutation(len(negatives))
    neg_db, neg_q = negatives[order[: len(order) // 2]], negatives[order[len(order) // 2 :]]
    hv, tv = st.vectors(held), st.vectors(train)
    hl = np.array([rows[k].landmark_id for k in held])
    tl = np.array([rows[k].landmark_id for k in train])
    print(
        f"{len(held)} validation photos, {len(train)} training photos, {len(neg_db)} known non-landmarks in the "
        f"database and {len(neg_q)} as queries ({st.dim}-d, {st.config.model.checkpoint or 'ImageNet'})"
    )
    print(f"{'setting':32s} {'kNN wrong':>9s} {'kNN GAP':>8s} {'mAP@100':>8s}")
    w, g, m = scores(l2n, hv, tv, hl, tl, neg_db, neg_q)
    print(f"{'none':32s} {w:9d} {g:8.4f} {m:8.4f}")
    t0 = time.perf_counter()
    for shrink in (float(s) for s in args.shrinkage.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            lw = learn_labelled_whitening(tv, tl, min(dim, st.dim), shrinkage=shrink)
            w, g, m = scores(lw.apply, hv, tv, hl, tl, neg_db, neg_q)
            print(f"{f'learned dim {dim} shrinkage {shrink:g}':32s} {w:9d} {g:8.4f} {m:8.4f}")
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
