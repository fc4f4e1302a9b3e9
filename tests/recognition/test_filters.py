"""Non-landmark filters on constructed inputs: class groups, the object prior, the detector rule, an
ONNX detector, and the distractor-similarity filter."""

import numpy as np
import pytest
import torch
from PIL import Image

from landmark.recognition.filters import (
    LANDMARK,
    NON_LANDMARK,
    UNCERTAIN,
    ClassGroups,
    Detection,
    FilterConfigError,
    OnnxDetector,
    detector_decision,
    distractor_scores,
    prior_decisions,
)
from onnx_helpers import constant_detector


@pytest.fixture(scope="module")
def groups():
    return ClassGroups.load()


def test_packaged_groups_cover_imagenet_with_the_right_names(groups):
    from importlib import resources

    import yaml
    from timm.data import ImageNetInfo

    assert len(groups.index) == 1000 and (groups.index >= 0).all()
    info = ImageNetInfo()
    data = yaml.safe_load(resources.files("landmark.resources").joinpath("imagenet_groups.yaml").read_text())
    for name, spec in data["groups"].items():
        for idx, cls_name in (spec.get("classes") or {}).items():
            assert info.index_to_description(int(idx)).split(",")[0].strip() == cls_name, (name, idx)

    def role(c):
        return groups.roles[groups.index[c]]

    assert (
        role(483) == LANDMARK and role(497) == LANDMARK and role(839) == LANDMARK
    )  # castle, church, suspension bridge
    assert role(526) == NON_LANDMARK and role(963) == NON_LANDMARK and role(207) == NON_LANDMARK  # desk, pizza, a dog
    assert role(979) == UNCERTAIN  # valley
    assert role(3) == NON_LANDMARK and role(999) == NON_LANDMARK  # default group: objects


def test_group_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text(
        "groups:\n  a: {role: landmark, classes: {1: x}}\n  b: {role: landmark, classes: {1: y}}\ndefault_group: a\n"
    )
    with pytest.raises(FilterConfigError, match="class 1 is in both"):
        ClassGroups.load(bad)
    bad.write_text("groups:\n  a: {role: maybe}\n")
    with pytest.raises(FilterConfigError, match="role 'maybe'"):
        ClassGroups.load(bad)
    bad.write_text("groups:\n  a: {role: landmark, classes: {1: x}}\n")
    with pytest.raises(FilterConfigError, match="no default_group"):
        ClassGroups.load(bad, num_classes=3)


def test_group_probabilities_sum_softmax_per_group(groups):
    logits = torch.full((2, 1000), -20.0)
    logits[0, 483] = 20.0  # castle
    logits[1, 526] = 20.0  # desk
    p = groups.group_probabilities(logits).numpy()
    assert p.shape == (2, len(groups.names)) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert p[0, groups.names.index("landmark")] > 0.99 and p[1, groups.names.index("indoor")] > 0.99


def test_prior_decision_boundaries(groups):
    g = list(groups.names)

    def row(**mass):
        r = np.zeros(len(g))
        for k, v in mass.items():
            r[g.index(k)] = v
        return r

    probs = np.stack(
        [
            row(landmark=0.3, food=0.7),  # landmark mass at the minimum: landmark wins
            row(landmark=0.29, food=0.71),  # below it, non-landmark mass 0.71 > 0.6
            row(landmark=0.1, food=0.6, scenery=0.3),  # exactly 0.6: not more than -> uncertain
            row(scenery=0.9, food=0.1),
            np.full(len(g), np.nan),
        ]
    )  # no prior computed
    d = prior_decisions(probs, groups, landmark_min=0.3, object_min=0.6)
    assert [x.decision for x in d] == [LANDMARK, NON_LANDMARK, UNCERTAIN, UNCERTAIN, UNCERTAIN]
    assert d[1].top_group == "food" and d[1].non_landmark_prob == pytest.approx(0.71)
    assert prior_decisions(probs[2:3], groups, 0.3, 0.5)[0].decision == NON_LANDMARK


ROLES = {"Building": LANDMARK, "Tower": LANDMARK, "Tree": UNCERTAIN, "Person": NON_LANDMARK, "Car": NON_LANDMARK}


def test_detector_rule_landmark_part_wins():
    dets = [Detection("Person", 0.99, (0, 0, 100, 100)), Detection("Tower", 0.5, (40, 0, 60, 30))]
    assert detector_decision(dets, (100, 100), ROLES).decision == LANDMARK


def test_detector_rule_big_confident_non_landmark_object():
    big = Detection("Car", 0.31, (0, 0, 100, 61))  # covers 61 % with score 0.31
    assert detector_decision([big], (100, 100), ROLES).decision == NON_LANDMARK
    assert detector_decision([Detection("Car", 0.30, (0, 0, 100, 61))], (100, 100), ROLES).decision == UNCERTAIN
    assert detector_decision([Detection("Car", 0.9, (0, 0, 100, 60))], (100, 100), ROLES).decision == UNCERTAIN
    assert detector_decision([Detection("Tree", 0.9, (0, 0, 100, 100))], (100, 100), ROLES).decision == UNCERTAIN
    # a box reaching outside the photo only counts inside it
    assert detector_decision([Detection("Car", 0.9, (-50, -50, 100, 65))], (100, 100), ROLES).decision == NON_LANDMARK
    assert detector_decision([Detection("Car", 0.9, (-500, 0, 50, 100))], (100, 100), ROLES).decision == UNCERTAIN
    # an unknown class counts as non-landmark (the paper's 'other classes')
    assert detector_decision([Detection("Pizza", 0.9, (0, 0, 100, 100))], (100, 100), ROLES).decision == NON_LANDMARK
    # a landmark-part detection below the score threshold is not 'present'
    weak = [Detection("Building", 0.2, (0, 0, 10, 10)), big]
    assert detector_decision(weak, (100, 100), ROLES).decision == NON_LANDMARK


def test_onnx_detector_maps_boxes_back_to_the_photo(tmp_path):
    # the model sees a fixed 32 x 64 (w x h) input; the photo is 320 x 640, so boxes scale by 10
    constant_detector(tmp_path / "det.onnx", [[0, 0, 32, 40], [10, 10, 12, 12]], [0.9, 0.8], [1, 0])
    (tmp_path / "labels.txt").write_text("Tower\nCar\n")
    (tmp_path / "roles.yaml").write_text("Tower: landmark\nCar: non_landmark\n")
    det = OnnxDetector(tmp_path / "det.onnx", tmp_path / "labels.txt", tmp_path / "roles.yaml")
    found = det.detect(Image.new("RGB", (320, 640)))
    assert [d.label for d in found] == ["Car", "Tower"]
    assert found[0].box == pytest.approx((0, 0, 320, 400)) and found[0].score == pytest.approx(0.9)
    assert detector_decision(found, (320, 640), det.roles).decision == LANDMARK  # the tower is present
    assert detector_decision(found[:1], (320, 640), det.roles).decision == NON_LANDMARK  # car covers 62.5 %
    with pytest.raises(FileNotFoundError):
        OnnxDetector(tmp_path / "missing.onnx", ["x"], {})
    (tmp_path / "bad.yaml").write_text("Car: vehicle\n")
    with pytest.raises(FilterConfigError):
        OnnxDetector(tmp_path / "det.onnx", tmp_path / "labels.txt", tmp_path / "bad.yaml")


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_distractor_score_is_min_of_top3_and_skips_self():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=64))
    near = _unit(base + 0.05 * rng.normal(size=(3, 64)))  # three close non-landmark photos
    far = _unit(rng.normal(size=(20, 64)))
    distractors = np.concatenate([near, far])
    q = np.stack([base, _unit(rng.normal(size=64))])
    s = distractor_scores(q, distractors, k=3)
    top3 = np.sort(distractors @ base)[::-1][:3]
    assert s[0] == pytest.approx(top3.min(), abs=1e-5) and s[0] > 0.9
    assert s[1] < 0.5
    # the filter rule: min of top-3 above the threshold
    assert (s > 0.9).tolist() == [True, False]
    # only two close photos: the third-best is far, so the query is not a distractor
    assert distractor_scores(base[None], np.concatenate([near[:2], far]), k=3)[0] < 0.5
    # a query that is one of the distractors is not compared with itself
    ids = [f"d{i}" for i in range(len(distractors))]
    with_self = distractor_scores(near[:1], distractors, 3)
    without = distractor_scores(near[:1], distractors, 3, ["d0"], ids)
    assert without[0] < with_self[0]
    # fewer known non-landmarks than k: the filter cannot fire
    assert np.isneginf(distractor_scores(q, near[:2], k=3)).all()


def test_large_sets_are_searched_by_ivf_finding_the_same_nearest_photos():
    import faiss

    from landmark.recognition.filters import similarity_index, top_similarities

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(150, 32))
    x = centres[rng.integers(0, 150, 3000)] + 0.5 * rng.normal(size=(3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    exact, approx = similarity_index(x, exact_max=3000), similarity_index(x, exact_max=1000)
    assert isinstance(exact, faiss.IndexFlatIP) and isinstance(approx, faiss.IndexIVFFlat)
    assert approx.ntotal == 3000 and approx.nlist == int(4 * np.sqrt(3000))
    (es, er), (as_, ar) = top_similarities(x, exact, 2), top_similarities(x, approx, 2)
    assert np.mean(er[:, 1] == ar[:, 1]) > 0.98  # each photo's nearest other, as the exact search finds it
    assert np.all(as_[:, 1] <= es[:, 1] + 1e-5)  # never a similarity the exact search would not give
