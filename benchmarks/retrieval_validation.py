"""Choose the retrieval hyper-parameters (whitening, DBA/QE verification) on a validation split of train.

    python benchmarks/retrieval_validation.py runs/demo/store

Reads the store's train vectors (labelled), its index vectors (unlabelled, for PCA only) and its known
non-landmarks (photos its object prior flags; they join the validation database, relevant to no query,
as such photos sit in a test database); never the test split or its solution. Prints the validation
mAP@100 of each trial and the chosen settings.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np

import landmark
from landmark.config import Config
from landmark.evaluation.ablation import tune_on_validation


def main(store_dir: str) -> None:
    lm = landmark.open(store_dir)
    st = lm.store
    train_keys, index_keys = st.keys("train"), st.keys("index")
    rows = st.get(train_keys)
    train = st.vectors(train_keys)
    labels = np.array([rows[k].landmark_id for k in train_keys], np.int64)
    index = st.vectors(index_keys)
    config = st.config
    _, negatives = lm.recognising.recognizer.known_non_landmarks(lm.recognising.recognition_config)
    t0 = time.perf_counter()
    res = tune_on_validation(
        train, labels, index, Config(whitening=config.whitening, expansion=config.expansion), negatives=negatives
    )
    for t in res["trials"]:
        print(f"{t['map']:.4f}  {json.dumps({k: v for k, v in t.items() if k != 'map'})}")
    print(
        f"validation split {res['sizes']} ({len(negatives)} known non-landmarks in the database); "
        f"plain kNN mAP@100 {res['plain']:.4f}"
    )
    print(f"best whitening {res['whitening']} -> {res['whitening_map']:.4f}")
    print(f"best expansion {res['expansion']} -> {res['expansion_map']:.4f}")
    print(f"{time.perf_counter() - t0:.1f} s on {platform.processor() or platform.machine()}, {platform.platform()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo/store")
