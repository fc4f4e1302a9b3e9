import json

import numpy as np
import pytest
import torch

from landmark.config import ExtractConfig, ModelConfig
from landmark.features import GlobalExtractor
from landmark.features import engine as E
from landmark.features.extract import REGIONS_EXTRA
from landmark.models import build_model
from landmark.utils.device import tune_cpu_allocator

from .test_extract import photos

LITE0 = ModelConfig(backbone="tf_efficientnet_lite0")
GRAPH_ENGINES = [name for name in E.available_engines() if E.ENGINES[name].needs_graph]


@pytest.fixture(scope="module")
def net():
    return build_model(LITE0).eval()


@pytest.mark.parametrize("kind", GRAPH_ENGINES)
def test_engines_give_torchs_feature_maps_at_any_shape_and_tap(kind, net, tmp_path):
    source = E.TrunkSource(net.backbone, taps=(3,), store_dir=tmp_path)
    engine = E.make_engine(kind, source, torch.device("cpu"))
    assert type(engine).__name__ != "TorchEngine"
    for shape in ((2, 3, 96, 128), (1, 3, 77, 101)):  # dynamic batch, height and width, odd sizes too
        x = torch.randn(*shape)
        with torch.inference_mode():
            ref = net.backbone.forward_taps(x, (3,))
            got = engine(x)
        assert len(got) == 2
        for r, g in zip(ref, got):
            assert g.shape == r.shape
            assert float((g - r).abs().max()) < 1e-4


def test_a_graph_is_named_by_its_weights_and_exported_once(net, tmp_path, monkeypatch):
    calls = []
    real = E.export_trunk
    monkeypatch.setattr(E, "export_trunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    first = E.TrunkSource(net.backbone, store_dir=tmp_path / "store-a" / "engines").graph()
    second = E.TrunkSource(net.backbone, store_dir=tmp_path / "store-b" / "engines").graph()
    assert len(calls) == 1  # the second store's graph comes from the user cache
    assert first.parent == tmp_path / "store-a" / "engines" and second.parent == tmp_path / "store-b" / "engines"
    assert first.name == second.name and (tmp_path / "cache" / "engines" / first.name).is_file()
    changed = build_model(LITE0).eval()
    with torch.no_grad():
        changed.backbone.trunk.conv_stem.weight.mul_(1.01)
    other = E.TrunkSource(changed.backbone, store_dir=tmp_path / "store-a" / "engines").graph()
    assert other.name != first.name and len(calls) == 2  # changed weights never run on a stale graph


def test_auto_measures_once_and_remembers_its_choice(net, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path))
    source = E.TrunkSource(net.backbone)
    chosen = E.fastest_engine(source, batch_size=2, image_size=64)
    assert chosen in E.available_engines()
    choices = json.loads((tmp_path / "engines" / "choices.json").read_text())
    (entry,) = choices.values()
    assert entry["engine"] == chosen and set(entry["images_per_s"]) == set(E.available_engines())
    monkeypatch.setattr(E, "time_engines", lambda *a, **k: pytest.fail("measured again"))
    assert E.fastest_engine(source, batch_size=2, image_size=64) == chosen


def test_off_the_cpu_the_engine_is_torch(net):
    source = E.TrunkSource(net.backbone)
    assert isinstance(E.make_engine("auto", source, torch.device("cuda")), E.TorchEngine)
    with pytest.raises(E.EngineError, match="runs on the CPU"):
        E.make_engine("onnxruntime", source, torch.device("cuda"))


def test_an_unknown_engine_is_refused_when_the_extractor_is_made(net):
    with pytest.raises(E.EngineError, match="extract.engine must be one of"):
        GlobalExtractor(net, ExtractConfig(engine="tensorrt", device="cpu"), LITE0)


@pytest.mark.parametrize("kind", GRAPH_ENGINES)
def test_extraction_with_probe_and_regions_equals_torch(kind, net, tmp_path):
    items = photos(tmp_path, n=4)

    def run(engine):
        ex = GlobalExtractor(
            net,
            ExtractConfig(image_size=96, batch_size=2, device="cpu", engine=engine),
            LITE0,
            engine_dir=tmp_path / "engines",
        )
        probe = lambda t: t.mean(dim=(2, 3))[:, :3]  # noqa: E731 - reads the tapped stage's input
        probe.tap, probe.source = 2, "test"
        ex.set_probe("probe", probe)
        return ex.extract(items, progress=False, regions=2), ex

    ref, _ = run("torch")
    got, ex = run(kind)
    assert type(ex.trunk.engine((2,))).__name__ != "TorchEngine"
    assert got.ids == ref.ids
    assert np.abs(got.vectors - ref.vectors).max() < 1e-4
    assert np.abs(got.extras["probe"] - ref.extras["probe"]).max() < 1e-4
    assert np.abs(got.extras[REGIONS_EXTRA].astype(np.float32) - ref.extras[REGIONS_EXTRA]).max() < 2e-3  # float16


def test_the_allocator_is_tuned_once():
    assert tune_cpu_allocator() is True  # glibc on Linux: the thresholds are fixed
    assert tune_cpu_allocator() is True


def test_auto_makes_the_engine_it_timed_only_once(net, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path))
    built = []
    for name, spec in list(E.ENGINES.items()):
        counted = lambda source, _build=spec.build, _name=name: built.append(_name) or _build(source)  # noqa: E731
        monkeypatch.setitem(E.ENGINES, name, E.EngineSpec(spec.name, spec.available, counted, spec.needs_graph))
    engine = E.make_engine("auto", E.TrunkSource(net.backbone), torch.device("cpu"), batch_size=2, image_size=64)
    assert sorted(built) == sorted(E.available_engines())  # each built once, to be timed; the winner kept
    assert engine.name in built
