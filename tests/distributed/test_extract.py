"""Ray extraction gives the single-process vectors, in input order, and resumes from its chunk cache."""

from __future__ import annotations

import numpy as np
import pytest

from landmark.config import load_config
from landmark.data import read_gldv2
from landmark.features import GlobalExtractor
from landmark.recognition.filters import PROBE_NAME
from landmark.recognition.setup import attach_prior

ray = pytest.importorskip("ray")

from landmark.distributed import RayConfig, RayUnavailable, extract_distributed  # noqa: E402

pytestmark = pytest.mark.slow  # starts Ray workers

FAST = ["model.backbone=tf_efficientnet_lite0", "extract.image_size=160", "extract.num_workers=0"]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(gldv2_root):
    return read_gldv2(gldv2_root, "train").records[:9]


def test_matches_single_process_extraction_in_input_order(ray_local, photos, tmp_path):
    cfg = load_config(overrides=FAST)
    local = GlobalExtractor.from_config(cfg, device="cpu")
    attach_prior(local, cfg.recognition)
    expected = local.extract(photos, progress=False)
    got = extract_distributed(cfg, photos[::-1], RayConfig(actors=2, shard_size=4), progress=False)
    assert got.ids == [p.id for p in photos[::-1]]
    np.testing.assert_allclose(got.vectors, expected.vectors[::-1], atol=1e-5)
    assert set(got.sizes) == {p.id for p in photos}
    # the object prior comes back from the same forward pass, as with the local extractor
    assert set(got.extras) == set(expected.extras) == {PROBE_NAME}
    np.testing.assert_allclose(got.extras[PROBE_NAME], expected.extras[PROBE_NAME][::-1], atol=1e-5)
    # workers whose prior another classifier makes than the driver's are refused
    with pytest.raises(RayUnavailable, match="object priors"):
        extract_distributed(
            cfg,
            photos[:2],
            RayConfig(actors=1),
            progress=False,
            expect_prior_source="pretrained tf_efficientnet_lite0 from stage 6",
        )


def test_resumes_from_finished_shards_and_reports_bad_photos(ray_local, photos, tmp_path):
    cfg = load_config(overrides=FAST)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    first = extract_distributed(
        cfg, photos[:4], RayConfig(actors=1, shard_size=2), cache_dir=tmp_path / "cache", progress=False
    )
    assert len(first.ids) == 4
    chunks = sorted((tmp_path / "cache").glob("chunk-*.npz"))
    assert len(chunks) == 2
    # The cached shards are reused: only the 5 new photos (and the broken file) are extracted again.
    items = photos + [type(photos[0])("broken", bad)]
    second = extract_distributed(
        cfg, items, RayConfig(actors=2, shard_size=2), cache_dir=tmp_path / "cache", progress=False
    )
    assert second.ids == [p.id for p in photos]
    assert [f.id for f in second.failures] == ["broken"]
    assert len(sorted((tmp_path / "cache").glob("chunk-*.npz"))) == 2 + 3
    np.testing.assert_allclose(second.vectors[:4], first.vectors, atol=0)
    np.testing.assert_allclose(second.extras[PROBE_NAME][:4], first.extras[PROBE_NAME], atol=0)


def test_ray_data_scheduler_gives_the_same_vectors_and_shards(ray_local, photos, tmp_path):
    cfg = load_config(overrides=FAST)
    local = GlobalExtractor.from_config(cfg, device="cpu")
    expected = local.extract(photos, progress=False)
    got = extract_distributed(
        cfg, photos, RayConfig(actors=2, shard_size=4, scheduler="data"), cache_dir=tmp_path / "cache", progress=False
    )
    assert got.ids == [p.id for p in photos]
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-5)
    assert len(sorted((tmp_path / "cache").glob("chunk-*.npz"))) == 3  # 4 + 4 + 1 photos, one file each
    with pytest.raises(ValueError, match="scheduler"):
        extract_distributed(cfg, photos[:1], RayConfig(actors=1, scheduler="spark"), progress=False)
