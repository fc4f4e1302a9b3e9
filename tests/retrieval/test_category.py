import numpy as np
import pytest

from landmark.config import CategoryConfig, load_config
from landmark.index import Store
from landmark.retrieval.category import StoreCategories, category_first, confident_labels

from ..store_helpers import SIG


def test_confident_labels_follow_the_papers_rule():
    labels = np.array(
        [
            [3, 3, 4, 3, 4],  # two landmarks, best of 3 at 0.9: confident
            [3, 4, 5, 3, 3],  # three landmarks: not
            [3, 3, 3, 3, 3],  # one landmark but best similarity 0.8: not
            [-1, -1, -1, -1, -1],  # no labelled neighbour
            [7, 8, 8, 7, 7],
        ]
    )  # 7 wins the vote 3-2, its best is 0.95
    sims = np.array(
        [
            [0.9, 0.88, 0.87, 0.8, 0.7],
            [0.99, 0.9, 0.9, 0.8, 0.8],
            [0.8, 0.8, 0.7, 0.7, 0.6],
            [-np.inf] * 5,
            [0.95, 0.94, 0.93, 0.9, 0.9],
        ]
    )
    got = confident_labels(labels, sims, CategoryConfig(max_labels=2, min_similarity=0.85))
    assert got.tolist() == [3, -1, -1, -1, 7]
    assert confident_labels(labels, sims, CategoryConfig(max_labels=3, min_similarity=0.7)).tolist() == [3, 3, 3, -1, 7]


def test_category_first_is_a_stable_partition():
    assert category_first(["a", "b", "c", "d", "e"], 7, [1, 7, -1, 7, 2]) == [1, 3, 0, 2, 4]
    assert category_first(["a", "b"], -1, [7, 7]) == [0, 1]  # no confident query label: unchanged
    assert category_first([], 7, []) == []


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 8))

    def near(c, n, noise):
        x = centres[c] + noise * rng.normal(size=(n, 8))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add(
        [f"t{i}" for i in range(10)],
        np.concatenate([near(0, 5, 0.05), near(1, 5, 0.05)]),
        landmark_ids=[10] * 5 + [11] * 5,
        split="train",
    )
    far = -(centres[0] + centres[1])  # away from both landmarks
    far = (far / np.linalg.norm(far))[None].astype(np.float32)
    st.add(["close0", "far", "close1"], np.concatenate([near(0, 1, 0.05), far, near(1, 1, 0.05)]), split="index")
    return st, near


def test_store_categories_label_stored_photos_and_queries(store):
    st, near = store
    cats = StoreCategories(st, CategoryConfig(max_labels=2, min_similarity=0.9))
    assert cats.labels(["t0", "t7", "close0", "close1"]) == [10, 11, 10, 11]
    assert cats.labels(["far"]) == [-1]  # not near any labelled photo: no confident vote
    assert cats.vote(near(1, 2, 0.05)).tolist() == [11, 11]
    got = cats.rerank({"q": ["far", "t0", "close1", "t7"]}, {"q": 11})
    assert got == {"q": ["close1", "t7", "far", "t0"]}
