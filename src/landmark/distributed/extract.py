"""Global-descriptor extraction spread over a Ray cluster (or the local machine's cores).

Each Ray actor builds the same extractor from the pipeline configuration (so its vectors carry the
store's signature), takes shards of the photo list and returns their descriptors. The driver writes
every finished shard atomically to the same chunk cache the single-process extractor uses, so a
killed run resumes with only the unfinished shards, and the result is returned in input order.

>>> result = extract_distributed(config, manifest.records, RayConfig(address="auto", actors=8),
...                              cache_dir="runs/store/_work/extract-index")     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import Config, config_from_dict
from ..errors import LandmarkError
from ..features.extract import ExtractionResult, PhotoItem, _ChunkCache
from ..recognition.filters import PROBE_NAME
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)


class RayUnavailable(LandmarkError, RuntimeError):
    """Ray is not installed or its cluster cannot be reached."""


@dataclass
class RayConfig:
    """Where and how wide to run: ``address=None`` starts a local Ray, ``"auto"`` joins the running cluster."""

    address: str | None = None
    actors: int = 2                   # extractor replicas (one model each)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0       # e.g. 1.0 on a GPU cluster; the actor then extracts on its GPU
    shard_size: int = 128             # photos per task: the unit of work, of progress and of resume
    init_kwargs: dict[str, Any] = field(default_factory=dict)   # extra ray.init arguments


def _shards(items: Sequence[PhotoItem], size: int) -> list[list[PhotoItem]]:
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class _Worker:
    """One extractor replica; constructed inside a Ray actor process."""

    def __init__(self, config: dict[str, Any], device: str | None, store_root: str | None):
        from ..features.pipeline import build_extractor
        from ..recognition.setup import attach_prior

        cfg = config_from_dict(config)
        self.extractor = build_extractor(cfg, device=device, store_root=store_root)   # ensembles, whitening too
        attach_prior(self.extractor, cfg.recognition)          # the object prior, in the same forward pass

    def signature(self) -> dict[str, Any]:
        from ..recognition.setup import prior_source

        return self.extractor.signature | {"prior_source": prior_source(self.extractor)}

    def extract(self, shard: list[PhotoItem]) -> ExtractionResult:
        return self.extractor.extract(shard, progress=False)


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RayUnavailable("distributed extraction needs Ray: pip install 'ray>=2.9'") from exc
    return ray


def extract_distributed(config: Config, items: Sequence[PhotoItem], ray_cfg: RayConfig | None = None, *,
                        cache_dir: str | Path | None = None, progress: bool | None = None,
                        description: str = "extract (ray)", store_root: str | Path | None = None,
                        expect_prior_source: str | None = None) -> ExtractionResult:
    """Descriptors of ``items`` computed by Ray actors; resumable through ``cache_dir``.

    The vectors equal what the store's extractor (``store_root``: where a learned whitening lives)
    returns for the same configuration, one row per unique id, in input order. Probe outputs (the
    object prior) come back in ``extras``, also for shards read back from the chunk cache.
    ``expect_prior_source``: the driver's :func:`~landmark.recognition.setup.prior_source`; workers
    whose object prior comes from another classifier (e.g. a node without the pretrained weights) are
    refused, as are workers that disagree among themselves.
    """
    ray_cfg = ray_cfg or RayConfig()
    ray = _ray()
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=ray_cfg.address, include_dashboard=False, log_to_driver=False,
                     **({"num_cpus": max(1, int(ray_cfg.actors * ray_cfg.cpus_per_actor))}
                        if ray_cfg.address is None else {}), **ray_cfg.init_kwargs)
        except ConnectionError as exc:
            raise RayUnavailable(f"cannot reach the Ray cluster at {ray_cfg.address!r}: {exc}") from exc
        started_here = True
    try:
        return _run(ray, config, items, ray_cfg, cache_dir, progress, description,
                    None if store_root is None else str(store_root), expect_prior_source)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, config: Config, items: Sequence[PhotoItem], ray_cfg: RayConfig, cache_dir, progress, description,
         store_root, expect_prior_source=None):
    from ray.util import ActorPool

    device = "cuda" if ray_cfg.gpus_per_actor > 0 else "cpu"
    Actor = ray.remote(num_cpus=ray_cfg.cpus_per_actor, num_gpus=ray_cfg.gpus_per_actor)(_Worker)
    unique = list({it.id: it for it in reversed(items)}.values())[::-1]
    n_actors = max(1, min(ray_cfg.actors, -(-len(unique) // max(1, ray_cfg.shard_size))))
    actors = [Actor.remote(config.to_dict(), device, store_root) for _ in range(n_actors)]
    signatures = ray.get([a.signature.remote() for a in actors])
    signature = signatures[0]
    if any(s != signature for s in signatures) or (expect_prior_source is not None
                                                   and signature["prior_source"] != expect_prior_source):
        sources = sorted({s["prior_source"] for s in signatures} | {expect_prior_source or signature["prior_source"]})
        raise RayUnavailable(f"the Ray workers do not make the same vectors / object priors as the driver ({sources}): "
                             "install the same packages (model weights included) on every node")
    dim = int(signature["dim"])

    cache = _ChunkCache(Path(cache_dir), signature, dim) if cache_dir else None
    done_ids, done_vecs, failures, sizes, cached = cache.load() if cache else ([], [], [], {}, {})
    extras: dict[str, dict[str, np.ndarray]] = {}
    probed = cached.get("probe", [])
    cached_probe = np.concatenate(probed) if probed else np.zeros((0, 0), np.float32)
    if len(cached_probe) and len(cached_probe) == len(done_ids):
        extras[PROBE_NAME] = dict(zip(done_ids, cached_probe))
    skip = set(done_ids) | {f.id for f in failures}
    todo = [it for it in unique if it.id not in skip]
    if skip:
        log.info("%s: %d photos already extracted, %d to go", description, len(unique) - len(todo), len(todo))

    pool = ActorPool(actors)
    with progress_bar(description, total=len(unique), enabled=progress, completed=len(unique) - len(todo)) as bar:
        for res in pool.map_unordered(lambda a, shard: a.extract.remote(shard), _shards(todo, ray_cfg.shard_size)):
            if cache:
                cache.write(res.ids, [res.vectors], res.failures, res.sizes,
                            {"probe": [res.extras[PROBE_NAME]]} if PROBE_NAME in res.extras else None)
            for name, rows in res.extras.items():
                extras.setdefault(name, {}).update(zip(res.ids, rows))
            done_ids += res.ids
            done_vecs.append(res.vectors)
            failures += res.failures
            sizes.update(res.sizes)
            bar.advance(len(res.ids) + len(res.failures))
    for a in actors:
        ray.kill(a)

    vecs = np.concatenate(done_vecs).astype(np.float32) if done_vecs else np.zeros((0, dim), np.float32)
    position = {i: j for j, i in enumerate(done_ids)}
    order = [position[it.id] for it in unique if it.id in position]
    ids = [done_ids[j] for j in order]
    return ExtractionResult(ids, vecs[order], failures, {i: sizes[i] for i in ids if i in sizes},
                            {name: np.stack([rows[i] for i in ids]) for name, rows in extras.items()
                             if all(i in rows for i in ids) and ids})
