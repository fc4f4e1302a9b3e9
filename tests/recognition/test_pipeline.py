"""The recognizer's store-side evidence: which stored photos count as known non-landmarks."""

import numpy as np

from landmark.config import RecognitionConfig, load_config
from landmark.index import Store
from landmark.recognition.filters import PROBE_NAME, ClassGroups
from landmark.recognition.pipeline import DISTRACTOR_SPLIT, Recognizer
from store_helpers import SIG, unit


def _around(direction, n, seed, spread=0.05):
    rng = np.random.default_rng(seed)
    v = direction + spread * rng.normal(size=(n, len(direction)))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_flagged_photos_that_look_like_a_labelled_landmark_are_not_known_non_landmarks(tmp_path):
    groups = ClassGroups.load()
    objects = np.zeros(len(groups.names), np.float32)
    objects[list(groups.names).index("food")] = 1.0             # the prior calls every unlabelled photo an object
    tower = np.eye(8, dtype=np.float32)[0]
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"lab{i}" for i in range(6)], _around(tower, 6, 0), landmark_ids=[7] * 6, split="train")
    look_alikes, others = _around(tower, 3, 1), unit(5, seed=2)
    others[:, 0] = -np.abs(others[:, 0])                         # far from the labelled landmark
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    unlabelled = np.concatenate([look_alikes, others])
    keys = [f"tower{i}" for i in range(3)] + [f"obj{i}" for i in range(5)]
    st.add(keys, unlabelled, split="index", extras={PROBE_NAME: np.tile(objects, (8, 1))})
    st.add(["given"], _around(tower, 1, 3), split=DISTRACTOR_SPLIT)     # user-given: kept whatever it looks like
    cfg = RecognitionConfig(t1=0.9, t2=0.85)
    known, vecs = Recognizer(st, cfg, groups=groups).known_non_landmarks()
    assert sorted(known) == ["given"] + [f"obj{i}" for i in range(5)]
    assert vecs.shape == (6, 8)
    # with grading thresholds no neighbour reaches, the look-alikes are objects again
    known, _ = Recognizer(st, RecognitionConfig(t1=1.0, t2=1.0), groups=groups).known_non_landmarks()
    assert sorted(known) == ["given"] + [f"obj{i}" for i in range(5)] + [f"tower{i}" for i in range(3)]


def test_flagged_queries_join_the_distractor_set_only_when_they_do_not_look_like_a_landmark(tmp_path):
    groups = ClassGroups.load()
    objects = np.zeros(len(groups.names), np.float32)
    objects[list(groups.names).index("food")] = 1.0
    tower = np.eye(8, dtype=np.float32)[0]
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add([f"lab{i}" for i in range(6)], _around(tower, 6, 0), landmark_ids=[7] * 6, split="train")
    far = -_around(tower, 1, 4)
    queries = np.concatenate([_around(tower, 4, 5), far])              # 4 tower photos, 1 object photo
    probs = np.tile(objects, (5, 1))
    probs[3] = np.nan                                                  # the 4th tower photo is not flagged
    cfg = RecognitionConfig(t1=0.9, t2=0.85, distractor_k=3)
    ev = Recognizer(st, cfg, groups=groups).gather(queries, [f"q{i}" for i in range(5)], prior_probs=probs)
    assert [p.decision for p in ev.prior[:3]] == ["non_landmark"] * 3
    assert ev.distractor_set == 1                                      # only the object photo joined
    assert not np.isfinite(ev.distractor[3])                           # fewer than 3 known: cannot fire
    # before, the three flagged tower photos made the fourth look like a distractor
    ev_off = Recognizer(st, RecognitionConfig(t1=1.0, t2=1.0, distractor_k=3), groups=groups).gather(
        queries, [f"q{i}" for i in range(5)], prior_probs=probs)
    assert ev_off.distractor_set == 4 and ev_off.distractor[3] > 0.9
