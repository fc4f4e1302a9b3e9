"""Global-descriptor extraction spread over a Ray cluster (or the local machine's cores).

Each Ray actor builds the same extractor from the pipeline configuration (so its vectors carry the
store's signature), takes shards of the photo list and returns their descriptors. The driver writes
every finished shard atomically to the same chunk cache the single-process extractor uses, so a
killed run resumes with only the unfinished shards, and the result is returned in input order.

Two schedulers (``RayConfig.scheduler``): ``actors`` (the default), a pool of actors fed one shard at
a time, where the shard of an actor that is lost (its node died) goes back in the queue and a
replacement actor is asked for; and ``data``, the same shards through a Ray Data ``map_batches``
pipeline on an actor pool, which Ray Data restarts and retries itself. Both survive a lost node
(``tests/distributed/test_cluster.py``); the pool is the default: Ray Data was not faster
(``benchmarks/distributed.py``) and hands finished shards to the driver in bursts.

>>> result = extract_distributed(config, manifest.records, RayConfig(address="auto", actors=8),
...                              cache_dir="runs/store/_work/extract-index")     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, config_from_dict
from ..errors import LandmarkError
from ..features.extract import ExtractionResult, PhotoItem, _ChunkCache
from ..recognition.filters import PROBE_NAME
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)


SCHEDULERS = ("actors", "data")
MAX_TRIES = 3  # a shard that loses this many actors (a photo that crashes them) fails the run


class RayUnavailable(LandmarkError, RuntimeError):
    """Ray is not installed or its cluster cannot be reached."""


class RayConfigError(LandmarkError, ValueError):
    """A RayConfig that cannot run (e.g. an unknown scheduler)."""


@dataclass
class RayConfig:
    """Where and how wide to run: ``address=None`` starts a local Ray, ``"auto"`` joins the running cluster."""

    address: str | None = None
    actors: int = 2  # extractor replicas (one model each)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # e.g. 1.0 on a GPU cluster; the actor then extracts on its GPU
    shard_size: int = 128  # photos per task: the unit of work, of progress and of resume
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # extra ray.init arguments
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources each actor needs
    scheduler: str = "actors"  # actors: this module's pool (re-queues the shards of lost actors) |
    # data: a Ray Data map_batches pipeline (see benchmarks/distributed.py)
    replace_timeout_s: float = 600.0  # every actor lost: how long to wait for the cluster to place one again


def _shards(items: Sequence[PhotoItem], size: int) -> list[list[PhotoItem]]:
    size = max(1, int(size))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class _Worker:
    """One extractor replica; constructed inside a Ray actor process."""

    def __init__(self, config: dict[str, Any], device: str | None, store_root: str | None):
        from ..features.pipeline import build_extractor
        from ..recognition.setup import attach_prior

        cfg = config_from_dict(config)
        self.extractor = build_extractor(cfg, device=device, store_root=store_root)  # ensembles, whitening too
        attach_prior(self.extractor, cfg.recognition)  # the object prior, in the same forward pass

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


def extract_distributed(
    config: Config,
    items: Sequence[PhotoItem],
    ray_cfg: RayConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    description: str = "extract (ray)",
    store_root: str | Path | None = None,
    expect_prior_source: str | None = None,
) -> ExtractionResult:
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
            ray.init(
                address=ray_cfg.address,
                include_dashboard=False,
                log_to_driver=False,
                **(
                    {"num_cpus": max(1, int(ray_cfg.actors * ray_cfg.cpus_per_actor))}
                    if ray_cfg.address is None
                    else {}
                ),
                **ray_cfg.init_kwargs,
            )
        except ConnectionError as exc:
            raise RayUnavailable(f"cannot reach the Ray cluster at {ray_cfg.address!r}: {exc}") from exc
        started_here = True
    try:
        return _run(
            ray,
            config,
            items,
            ray_cfg,
            cache_dir,
            progress,
            description,
            None if store_root is None else str(store_root),
            expect_prior_source,
        )
    finally:
        if started_here:
            ray.shutdown()


def _run(
    ray,
    config: Config,
    items: Sequence[PhotoItem],
    ray_cfg: RayConfig,
    cache_dir,
    progress,
    description,
    store_root,
    expect_prior_source=None,
):
    unique = list({it.id: it for it in reversed(items)}.values())[::-1]
    n_actors = max(1, min(ray_cfg.actors, -(-len(unique) // max(1, ray_cfg.shard_size))))
    data = ray_cfg.scheduler == "data"
    if ray_cfg.scheduler not in SCHEDULERS:
        raise RayConfigError(f"RayConfig.scheduler must be one of {SCHEDULERS}, got {ray_cfg.scheduler!r}")
    # with Ray Data, one actor answers for the signature and leaves its place to the pipeline's actors
    pool = _ExtractorPool(ray, config, ray_cfg, store_root, 1 if data else n_actors)
    try:
        signature = pool.check(expect_prior_source)
        if data:
            pool.close()
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

        shards = _shards(todo, ray_cfg.shard_size)
        results = _data_results(ray, config, ray_cfg, store_root, shards, n_actors) if data else pool.map(shards)
        with progress_bar(description, total=len(unique), enabled=progress, completed=len(unique) - len(todo)) as bar:
            for res in results:
                if cache:
                    cache.write(
                        res.ids,
                        [res.vectors],
                        res.failures,
                        res.sizes,
                        {"probe": [res.extras[PROBE_NAME]]} if PROBE_NAME in res.extras else None,
                    )
                for name, rows in res.extras.items():
                    extras.setdefault(name, {}).update(zip(res.ids, rows))
                done_ids += res.ids
                done_vecs.append(res.vectors)
                failures += res.failures
                sizes.update(res.sizes)
                bar.advance(len(res.ids) + len(res.failures))
    finally:
        pool.close()

    vecs = np.concatenate(done_vecs).astype(np.float32) if done_vecs else np.zeros((0, dim), np.float32)
    position = {i: j for j, i in enumerate(done_ids)}
    order = [position[it.id] for it in unique if it.id in position]
    ids = [done_ids[j] for j in order]
    return ExtractionResult(
        ids,
        vecs[order],
        failures,
        {i: sizes[i] for i in ids if i in sizes},
        {
            name: np.stack([rows[i] for i in ids])
            for name, rows in extras.items()
            if all(i in rows for i in ids) and ids
        },
    )


class _ExtractorPool:
    """Extractor actors fed one shard at a time; a shard whose actor is lost (its node died, its
    process was killed) goes back in the queue for the others, and a replacement actor is asked for,
    which joins once the cluster has room for it. Only when every actor is gone and none can be
    placed within ``RayConfig.replace_timeout_s`` does the run fail (its finished shards are cached)."""

    def __init__(self, ray, config: Config, ray_cfg: RayConfig, store_root: str | None, n_actors: int):
        self.ray, self.cfg = ray, ray_cfg
        device = "cuda" if ray_cfg.gpus_per_actor > 0 else "cpu"
        self._new = lambda: ray.remote(
            num_cpus=ray_cfg.cpus_per_actor,
            num_gpus=ray_cfg.gpus_per_actor,
            resources=ray_cfg.resources or None,
            max_restarts=0,
        )(_Worker).remote(config.to_dict(), device, store_root)
        self.actors = [self._new() for _ in range(n_actors)]
        self.signature: dict[str, Any] | None = None

    def check(self, expect_prior_source: str | None) -> dict[str, Any]:
        """Every actor's signature, refused unless all agree with each other and with the driver."""
        signatures = self.ray.get([a.signature.remote() for a in self.actors])
        signature = signatures[0]
        if any(s != signature for s in signatures) or (
            expect_prior_source is not None and signature["prior_source"] != expect_prior_source
        ):
            sources = sorted(
                {s["prior_source"] for s in signatures} | {expect_prior_source or signature["prior_source"]}
            )
            raise RayUnavailable(
                f"the Ray workers do not make the same vectors / object priors as the driver "
                f"({sources}): install the same packages (model weights included) on every node"
            )
        self.signature = signature
        return signature

    def map(self, shards: list[list[PhotoItem]]) -> Iterator[ExtractionResult]:
        """Each shard's result, in the order they finish."""
        from ray.exceptions import RayActorError

        ray, queue, idle = self.ray, deque(shards), list(self.actors)
        running: dict[Any, tuple[Any, list[PhotoItem]]] = {}  # result ref -> (actor, shard)
        joining: dict[Any, Any] = {}  # signature ref -> replacement actor
        alone_since: float | None = None
        tries: dict[int, int] = {}
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                shard = queue.popleft()
                running[actor.extract.remote(shard)] = (actor, shard)
            if not running:  # every actor lost: wait for a replacement
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since > self.cfg.replace_timeout_s:
                    raise RayUnavailable(
                        f"every Ray extractor was lost and none could be placed again in "
                        f"{self.cfg.replace_timeout_s:.0f} s; run again to resume from the "
                        "finished shards"
                    )
            else:
                alone_since = None
            ready, _ = ray.wait([*running, *joining], num_returns=1, timeout=1.0 if not running else None)
            for ref in ready:
                if ref in joining:
                    actor = joining.pop(ref)
                    try:
                        ok = ray.get(ref) == self.signature
                    except RayActorError:
                        ok = False
                    if ok:
                        idle.append(actor)
                    else:
                        self._drop(actor)
                    continue
                actor, shard = running.pop(ref)
                try:
                    res = ray.get(ref)
                except RayActorError as exc:
                    log.warning(
                        "a Ray extractor was lost (%s); its %d photos go to another", type(exc).__name__, len(shard)
                    )
                    tries[id(shard)] = tries.get(id(shard), 0) + 1
                    if tries[id(shard)] >= MAX_TRIES:
                        raise RayUnavailable(
                            f"the shard starting with {shard[0].path} lost {MAX_TRIES} Ray "
                            "extractors in a row: one of its photos may crash the extractor"
                        ) from exc
                    queue.appendleft(shard)
                    self._drop(actor)
                    new = self._new()
                    self.actors.append(new)
                    joining[new.signature.remote()] = new
                    continue
                idle.append(actor)
                yield res

    def _drop(self, actor) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        try:
            self.ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone with its node
            pass

    def close(self) -> None:
        for actor in list(self.actors):
            self._drop(actor)


class _DataWorker:
    """:class:`_Worker` as a Ray Data ``map_batches`` class: one batch = one shard."""

    def __init__(self, config: dict[str, Any], device: str | None, store_root: str | None):
        self.worker = _Worker(config, device, store_root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [
            pickle.dumps(self.worker.extract([_Photo(i, Path(p)) for i, p in zip(ids, paths)]))
            for ids, paths in zip(batch["ids"], batch["paths"])
        ]
        return {"result": np.array(out, dtype=object)}


@dataclass(frozen=True)
class _Photo:
    id: str
    path: Path


def _data_results(
    ray, config: Config, ray_cfg: RayConfig, store_root: str | None, shards: list[list[PhotoItem]], n_actors: int
) -> Iterator[ExtractionResult]:
    """The shards through a Ray Data pipeline (photo list -> ``map_batches`` on an actor pool), in the
    order they finish; Ray Data restarts lost actors and retries their batches."""
    if not shards:
        return
    device = "cuda" if ray_cfg.gpus_per_actor > 0 else "cpu"
    rows = [{"ids": [it.id for it in s], "paths": [str(it.path) for it in s]} for s in shards]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _DataWorker,
        fn_constructor_args=(config.to_dict(), device, store_root),
        batch_size=1,
        concurrency=n_actors,
        num_cpus=ray_cfg.cpus_per_actor,
        num_gpus=ray_cfg.gpus_per_actor,
        resources=ray_cfg.resources or None,
        zero_copy_batch=True,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for blob in batch["result"]:
            yield pickle.loads(blob)
