import dataclasses

import pytest

from landmark.config import (
    PRESETS,
    Config,
    ConfigError,
    config_from_dict,
    explicit,
    load_config,
    merge,
    parse_overrides,
)


def test_default_preset_is_the_issue_baseline():
    cfg = load_config()
    assert cfg.model.backbone == "tf_efficientnet_lite2"
    assert cfg.model.pooling == "gem" and cfg.model.gem_p == 3.0
    assert cfg.extract.image_size == 384 and cfg.recognition.k == 5


def test_preset_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("extract:\n  image_size: 512\n  batch_size: 4\n")
    cfg = load_config("lite0-gem", f, ["extract.image_size=256", "model.gem_p=4", "extract.scales=[0.5, 1]"])
    assert cfg.model.backbone == "tf_efficientnet_lite0"  # from the preset
    assert cfg.extract.batch_size == 4  # from the file
    assert cfg.extract.image_size == 256  # override beats file
    assert cfg.model.gem_p == 4.0 and isinstance(cfg.model.gem_p, float)
    assert cfg.extract.scales == (0.5, 1.0)


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key extract.imagesize"):
        load_config(overrides=["extract.imagesize=3"])
    with pytest.raises(ConfigError, match="extract.image_size: expected an integer"):
        load_config(overrides=["extract.image_size=big"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["image_size"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.backbone=resnet9000", "model.backbone: unknown backbone 'resnet9000'"),
        ("ensemble=[{backbone: tf_efficientnet_lite1}, {pooling: max}]", "ensemble.pooling: expected one of"),
        (
            "local.kind=surf",
            r"local.kind: expected one of \['rootsift', 'affine_rootsift', 'orb', 'brisk', 'aliked', 'disk', "
            r"'xfeat', 'delf'\], got 'surf'",
        ),
        (
            "rerank.matcher=superglue",
            r"rerank.matcher: expected one of \['mnn', 'lightglue', 'lighterglue'\], got 'superglue'",
        ),
        ("index.kind=hnsw", "index.kind: expected one of"),
        ("expansion.verify=always", "expansion.verify: expected one of"),
        ("recognition.filtered=hide", "recognition.filtered: expected one of"),
        ("recognition.k=0", "recognition.k: expected at least 1, got 0"),
        ("extract.image_size=-5", "extract.image_size: expected at least 32"),
        ("search.k=0", "search.k: expected at least 1"),
    ],
)
def test_values_no_stage_can_run_with_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_values_in_range_and_hub_backbones_pass():
    cfg = load_config(
        overrides=[
            "model.backbone=timm/resnet50",
            "model.pooling=MAC",
            "index.kind=ivfpq",
            "index.nprobe=0",
            "extract.image_size=32",
            "whitening.kind=pca",
        ]
    )
    assert cfg.model.backbone == "timm/resnet50" and cfg.index.kind == "ivfpq"


def test_optional_fields_and_round_trip():
    cfg = load_config(overrides=["model.embedding_dim=512"])
    assert cfg.model.embedding_dim == 512
    assert config_from_dict(cfg.to_dict()) == cfg
    assert load_config(overrides=["model.embedding_dim=null"]).model.embedding_dim is None


def test_every_preset_builds():
    for name in PRESETS:
        assert isinstance(load_config(name), Config)


def test_explicit_settings_include_those_set_to_their_default(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("recognition:\n  t2: 0.85\n")
    cfg = load_config("lite0-gem", f, ["recognition.t1=0.9", "category={enabled: true}", "expansion.qe=false"])
    # t1 / t2 / enabled are the defaults, yet the user chose them: calibration must keep them
    assert explicit(cfg, "recognition") == {"t1": 0.9, "t2": 0.85}
    assert explicit(cfg, "category") == {"enabled": True}
    assert explicit(cfg, "expansion") == {"qe": False} and explicit(load_config(), "expansion") == {}
    assert explicit(cfg, "extract") == {"image_size": 320}  # from the preset
    assert "given" not in cfg.to_dict() and config_from_dict(cfg.to_dict()) == cfg  # never saved
    with pytest.raises(ConfigError, match="unknown config key given"):
        merge(Config(), {"given": ["x"]})
    # a config built or changed in code: what differs from the defaults counts too
    hand = merge(Config(), {"recognition": {"t1": 0.9, "t2": 0.5}})
    assert hand.given is None and explicit(hand, "recognition") == {"t2": 0.5}
    changed = dataclasses.replace(cfg, recognition=dataclasses.replace(cfg.recognition, k=7))
    assert explicit(changed, "recognition") == {"t1": 0.9, "t2": 0.85, "k": 7}


def test_the_composed_config_imports_no_stage_logic():
    """``landmark.config`` composes the stages' config leaves: no stage module, no torch / FAISS / OpenCV."""
    import subprocess
    import sys

    code = (
        "import sys, landmark.config; print(' '.join(m for m in sys.modules "
        "if m.startswith('landmark') or m in ('torch', 'faiss', 'cv2', 'numpy')))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    allowed_leaves = {
        "landmark",
        "landmark.config",
        "landmark.errors",
        "landmark.utils",
        "landmark.utils.config",
        "landmark.utils.lazy",
        "landmark.utils.registry",
    }
    stages = {"models", "features", "index", "retrieval", "recognition"}
    allowed = allowed_leaves | {f"landmark.{s}" for s in stages} | {f"landmark.{s}.config" for s in stages}
    assert loaded <= allowed, sorted(loaded - allowed)
    assert "landmark.index.config" in loaded  # each section's dataclass comes from its stage


def test_stage_choices_match_their_registries():
    from landmark.models.backbones import REGISTRY
    from landmark.models.config import BACKBONES, POOLINGS
    from landmark.models.pooling import POOLINGS as POOLING_LAYERS

    assert set(BACKBONES) == set(REGISTRY)
    assert set(POOLINGS) == set(POOLING_LAYERS)


def test_the_stage_configs_name_the_kinds_their_modules_implement():
    """The light config leaves list each kind; the stage modules implement exactly those."""
    from landmark.features.config import LOCAL_KINDS, LOCAL_MODELS
    from landmark.features.learned import LEARNED_KINDS
    from landmark.features.local import OPENCV_DETECTORS
    from landmark.retrieval.config import VERIFICATION_MODELS
    from landmark.retrieval.verification import ESTIMATORS

    assert set(LOCAL_KINDS) == set(OPENCV_DETECTORS) | set(LEARNED_KINDS) | set(LOCAL_MODELS)
    assert set(VERIFICATION_MODELS) == set(ESTIMATORS)
