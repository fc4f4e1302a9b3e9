"""The store remembers which groups and which classifier made its object priors."""

from landmark.config import load_config
from landmark.index import Store
from landmark.recognition.filters import ClassGroups
from landmark.recognition.setup import calibrated_with_other_priors, priors_stale, record_groups
from store_helpers import SIG


def test_priors_made_by_another_classifier_or_groups_are_stale(tmp_path):
    store = Store.create(tmp_path / "s", load_config(), SIG)
    groups = ClassGroups.load()
    assert not priors_stale(store, groups, "own")  # nothing recorded yet: nothing to redo
    record_groups(store, groups)  # made by the backbone's own head
    assert not priors_stale(store, groups, "own")
    tail = "pretrained tf_efficientnet_lite2 from stage 6"
    assert priors_stale(store, groups, tail)  # a fine-tuned model now reads a pretrained tail
    record_groups(store, groups, tail)
    assert not priors_stale(store, groups, tail) and priors_stale(store, groups, "own")
    other = ClassGroups(groups.names[:-1], groups.roles[:-1], groups.index.clip(max=len(groups.names) - 2))
    assert priors_stale(store, other, tail)


def test_thresholds_fitted_on_another_classifiers_priors_are_noticed(tmp_path):
    from landmark.recognition.calibrate import CALIBRATION_META

    store = Store.create(tmp_path / "s", load_config(), SIG)
    assert not calibrated_with_other_priors(store, "own")  # never calibrated
    store.set_meta_value(CALIBRATION_META, {"validation": {"seed": 0}})  # made before sources were kept
    assert not calibrated_with_other_priors(store, "own")
    assert calibrated_with_other_priors(store, "pretrained tf_efficientnet_lite2 from stage 6")
    store.set_meta_value(CALIBRATION_META, {"validation": {"prior_source": "pretrained x from stage 6"}})
    assert not calibrated_with_other_priors(store, "pretrained x from stage 6")


def test_an_attached_prior_is_reused(monkeypatch):
    """A service opens a Landmarks per store generation over one extractor: the prior is set up once."""
    import landmark.recognition.filters as filters
    from landmark.config import ExtractConfig, ModelConfig
    from landmark.features import GlobalExtractor
    from landmark.models import build_model
    from landmark.recognition.setup import attach_prior

    model = ModelConfig(backbone="tf_efficientnet_lite0", checkpoint="model.pt")  # as a trained store's
    extractor = GlobalExtractor(
        build_model(ModelConfig(backbone="tf_efficientnet_lite0")), ExtractConfig(device="cpu"), model
    )
    calls = []
    real = filters.pretrained_tail
    monkeypatch.setattr(filters, "pretrained_tail", lambda b: calls.append(1) or real(b))
    cfg = load_config().recognition
    attach_prior(extractor, cfg)
    probe = extractor.probe
    attach_prior(extractor, cfg)
    assert extractor.probe is probe and len(calls) == 1
