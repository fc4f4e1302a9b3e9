"""What the recognition pipeline adds: the object-prior probe in the forward pass, and the decision
stages over a store.

    python benchmarks/recognition.py [--batches 5] [--size 384] [--preset lite2-gem] [--queries 1000] [--db 20000]

Prints (1) ms per batch of the descriptor forward with and without the ImageNet class-group probe
(same batches, random pixels at the given size), also for a fine-tuned copy of the model whose last
3 stages changed (the probe then reruns those stages with the pretrained weights), and (2) seconds to
gather the evidence (kNN over a synthetic store, distractor filter) and to decide (grading,
re-scoring) for N queries.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time

import numpy as np
import torch

from landmark.config import load_config
from landmark.features import GlobalExtractor
from landmark.index import Store
from landmark.recognition.filters import PROBE_NAME, ClassGroups, ImageNetPrior
from landmark.recognition.pipeline import Recognizer, decide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--db", type=int, default=20000)
    args = ap.parse_args()
    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"torch {torch.__version__} | threads {torch.get_num_threads()}"
    )

    cfg = load_config(args.preset, overrides=["extract.device=cpu"])
    ex = GlobalExtractor.from_config(cfg)
    groups = ClassGroups.load()
    x = torch.randn(args.batch, 3, args.size, args.size * 3 // 4)
    ex.embed_batch(x)  # warm-up
    timings = {}
    for name, probe in (
        ("descriptor only", None),
        ("descriptor + object prior", ImageNetPrior(ex.net.backbone, groups)),
    ):
        ex.set_probe(PROBE_NAME if probe else None, probe)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            ex.embed_batch_with_probe(x)
        timings[name] = (time.perf_counter() - t0) / args.batches * 1000
        print(f"{name:28s} {timings[name]:8.1f} ms / batch of {args.batch} at {args.size} px")
    print(
        f"probe overhead (difference of the two, noisy on a busy machine): "
        f"{100 * (timings['descriptor + object prior'] / timings['descriptor only'] - 1):+.1f} %"
    )
    levels = cfg.recognition.regions
    t0 = time.perf_counter()
    for _ in range(args.batches):
        ex.embed_views(x, levels)  # the query's regions, from the same feature map
    regional = (time.perf_counter() - t0) / args.batches * 1000
    print(
        f"{'+ regions (' + str(levels) + ' levels)':28s} {regional:8.1f} ms / batch "
        f"({100 * (regional / timings['descriptor + object prior'] - 1):+.1f} % over descriptor + prior)"
    )
    tuned = copy.deepcopy(ex.net)  # as `landmark train` leaves it: the last stages changed
    with torch.no_grad():
        for stage in tuned.backbone.stages()[-3:]:
            for p in stage.parameters():
                p.mul_(1.01)
    fine = GlobalExtractor(tuned, ex.cfg, ex.model_cfg)
    fine.set_probe(PROBE_NAME, ImageNetPrior.for_backbone(tuned.backbone, groups))
    fine.embed_batch_with_probe(x)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        fine.embed_batch_with_probe(x)
    tapped = (time.perf_counter() - t0) / args.batches * 1000
    print(
        f"{'fine-tuned + pretrained prior':28s} {tapped:8.1f} ms / batch (probe from stage {fine.probe.tap}: "
        f"{100 * (tapped / timings['descriptor only'] - 1):+.1f} % over the descriptor alone)"
    )
    with torch.inference_mode():
        fmap = ex.net.backbone(x.contiguous(memory_format=torch.channels_last))
        prior = ImageNetPrior(ex.net.backbone, groups)
        t0 = time.perf_counter()
        for _ in range(20):
            prior(fmap)
        alone = (time.perf_counter() - t0) / 20 * 1000
    print(
        f"the probe alone on the same feature maps: {alone:.2f} ms / batch "
        f"({100 * alone / timings['descriptor only']:.2f} % of the descriptor forward)"
    )

    rng = np.random.default_rng(0)
    dim = ex.dim
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(tmp, cfg, ex.signature)
        v = rng.normal(size=(args.db, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        labels = [int(i % 500) if i % 2 == 0 else None for i in range(args.db)]
        store.add(
            [f"p{i}" for i in range(args.db)],
            v,
            landmark_ids=labels,
            split="db",
            extras={PROBE_NAME: rng.dirichlet(np.ones(len(groups.names)), args.db)},
        )
        q = v[rng.integers(0, args.db, args.queries)] + 0.05 * rng.normal(size=(args.queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        rec = Recognizer(store, cfg.recognition, None, groups)
        t0 = time.perf_counter()
        ev = rec.gather(
            q, [f"q{i}" for i in range(args.queries)], rng.dirichlet(np.ones(len(groups.names)), args.queries)
        )
        t1 = time.perf_counter()
        decide(ev, cfg.recognition)
        t2 = time.perf_counter()
        print(
            f"gather evidence: {t1 - t0:.2f} s, decide: {t2 - t1:.3f} s for {args.queries} queries "
            f"over {args.db} stored photos ({ev.distractor_set} known non-landmarks)"
        )
        one = rng.dirichlet(np.ones(len(groups.names)), 1)
        t0 = time.perf_counter()
        for i in range(50):  # what the service does per request, the known set already made
            rec.gather(q[i : i + 1], [f"q{i}"], one)
        print(f"one query at a time (service requests): {(time.perf_counter() - t0) / 50 * 1000:.1f} ms to gather")
        store.close()


if __name__ == "__main__":
    main()
