"""Query views (recognition.regions, recognition.zoom) on validation photos of a store's train split.

    python benchmarks/query_views_validation.py runs/val/store [--paste 0.45] [--views 1x1,3x1,3x2] [--negatives 300]

The store holds the train (labelled) and index splits, e.g. `landmark index build DATA --split train
--split index --model runs/train/model.pt --store runs/val/store`. Its validation photos are those
its trained model held out (else a split by photo, as `landmark calibrate` makes). They are removed
from a copy of the store, then recognised against the photos left, for each setting REGIONSxZOOM:

* as they are, together with known non-landmark photos of the store (kNN votes wrong, and the GAP
  of the kNN vote over both: a view that lifts non-landmarks costs there);
* pasted at `--paste` of the long side into a known non-landmark scene (a small landmark in a wide view).

Prints one line per setting and set. Never reads the test split or a solution file.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import landmark
from landmark.data.manifests import ImageRecord
from landmark.data.splits import split_by_photo
from landmark.metrics import global_average_precision
from landmark.recognition.holdout import VAL_FRACTION, model_validation_ids


def pasted(photo: Path, scene: Path, share: float, rng: np.random.Generator) -> Image.Image:
    """``photo`` shrunk to ``share`` of the long side of ``scene`` (read at 640 px) and pasted at a random place."""
    bg = Image.open(scene).convert("RGB")
    s = 640 / max(bg.size)
    bg = bg.resize((round(bg.width * s), round(bg.height * s)))
    fg = Image.open(photo).convert("RGB")
    t = share * max(bg.size) / max(fg.size)
    fg = fg.resize((max(1, round(fg.width * t)), max(1, round(fg.height * t))))
    x, y = rng.integers(0, max(1, bg.width - fg.width)), rng.integers(0, max(1, bg.height - fg.height))
    bg.paste(fg, (int(x), int(y)))
    return bg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument(
        "--paste", type=float, default=0.45, help="long side of the pasted photo, as a share of the scene's"
    )
    ap.add_argument("--views", default="1x1,3x1,3x2", help="REGIONSxZOOM settings, comma-separated")
    ap.add_argument("--negatives", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src = landmark.open(args.store)
    keys = src.store.keys("train")
    rows = src.store.get(keys)
    held = sorted(model_validation_ids(src.store, keys, args.seed))
    if not held:
        labelled = [
            ImageRecord(k, Path(rows[k].path), rows[k].landmark_id) for k in keys if rows[k].landmark_id is not None
        ]
        held = sorted(r.id for r in split_by_photo(labelled, VAL_FRACTION, 2, args.seed).val)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.store, Path(tmp) / "store")
        lm = landmark.open(Path(tmp) / "store")
        lm.remove(held)
        neg_keys, _ = lm.recognising.recognizer.known_non_landmarks()
        neg_rows = lm.store.get(neg_keys)
        rng = np.random.default_rng(args.seed)
        negatives = [neg_keys[i] for i in rng.permutation(len(neg_keys))[: args.negatives]]
        truth = {k: rows[k].landmark_id for k in held} | {k: None for k in negatives}
        plain = [Image.open(rows[k].path).convert("RGB") for k in held] + [
            Image.open(neg_rows[k].path).convert("RGB") for k in negatives
        ]
        scenes = [neg_rows[neg_keys[i]].path for i in rng.integers(0, len(neg_keys), len(held))]
        small = [pasted(Path(rows[k].path), Path(s), args.paste, rng) for k, s in zip(held, scenes)]
        print(
            f"{len(held)} validation photos against {len(lm.store.keys('train'))} labelled ones; "
            f"{len(negatives)} known non-landmarks; pasted at {args.paste:g} of the long side"
        )
        for setting in args.views.split(","):
            regions, zoom = setting.split("x")
            lm.recognising.set_recognition_config(
                dataclasses.replace(lm.recognising.recognition_config, regions=int(regions), zoom=float(zoom))
            )
            for name, images, ids in (
                ("as taken + non-landmarks", plain, held + negatives),
                ("pasted small", small, held),
            ):
                t0 = time.perf_counter()
                vectors, extras = lm.embedding.query_views_of_images(images)
                seconds = time.perf_counter() - t0
                recs = lm.recognising.recognize_vectors(vectors, extras=extras, ids=ids)
                votes = {
                    k: (r.evidence["knn"]["landmark_id"], r.evidence["knn"]["similarity"]) for k, r in zip(ids, recs)
                }
                wrong = sum(votes[k][0] != truth[k] for k in held)
                print(
                    f"regions {regions} zoom {zoom}: {name:24s} kNN wrong {wrong:3d} of {len(held)}, "
                    f"GAP {global_average_precision(votes, {k: truth[k] for k in ids}):.4f} "
                    f"({1000 * seconds / len(images):.0f} ms a photo)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
