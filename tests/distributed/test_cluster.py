"""A real multi-node Ray cluster on this machine: a head and two worker nodes (separate raylets, one
extractor's CPU each, so the work must spread over both). One worker node is killed by its pids in
the middle of the build; the build finishes on the other node with the single-process descriptors."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from landmark.config import load_config
from landmark.data import read_gldv2
from landmark.features import GlobalExtractor
from landmark.recognition.filters import PROBE_NAME
from landmark.recognition.setup import attach_prior

ray = pytest.importorskip("ray")
pytest.importorskip("psutil")

from landmark.distributed import RayConfig, extract_distributed  # noqa: E402
from landmark.distributed.cluster import LocalCluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAST = ["model.backbone=tf_efficientnet_lite0", "extract.image_size=160", "extract.num_workers=0"]
SLOT = {"landmark_extract": 1}  # each worker node offers one extractor slot; the head none


@pytest.fixture
def cluster():
    c = LocalCluster(workers=[{"num_cpus": 1, "resources": SLOT}, {"num_cpus": 1, "resources": SLOT}])
    try:
        c.start()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()  # always: the nodes' processes and the session folder go, even on failure


def test_build_survives_a_killed_worker_node_with_single_process_descriptors(cluster, gldv2_root, tmp_path, caplog):
    photos = read_gldv2(gldv2_root, "train").records[:20]
    cfg = load_config(overrides=FAST)
    local = GlobalExtractor.from_config(cfg, device="cpu")
    attach_prior(local, cfg.recognition)
    expected = local.extract(photos, progress=False)

    cache = tmp_path / "cache"
    shards = 10
    killed: dict[str, object] = {}

    def kill_second_node_mid_run():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            done = len(list(cache.glob("chunk-*.npz"))) if cache.is_dir() else 0
            if done >= 2:
                killed.update(done=done, pids=cluster.kill_worker(1))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_second_node_mid_run, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="landmark.distributed.extract"):
        got = extract_distributed(
            cfg,
            photos,
            RayConfig(address=cluster.address, actors=2, shard_size=2, resources=SLOT),
            cache_dir=cache,
            progress=False,
        )
    killer.join(timeout=5)

    # the node died in the middle of the run, with work in flight that went to the surviving node
    assert killed and killed["pids"] and killed["done"] < shards
    assert any("was lost" in r.message for r in caplog.records)
    assert len(list(cache.glob("chunk-*.npz"))) == shards
    # and the build is the single-process one: every photo once, in input order, same descriptors
    assert got.ids == [p.id for p in photos]
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-5)
    np.testing.assert_allclose(got.extras[PROBE_NAME], expected.extras[PROBE_NAME], atol=1e-5)
