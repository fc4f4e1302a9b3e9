"""Threshold fitting of `landmark calibrate` on constructed validation data."""

import numpy as np
import pytest

from landmark.recognition.calibrate import _budget_threshold, fit_grading


def test_budget_threshold_rejects_at_most_the_budget():
    values = np.linspace(0.0, 0.99, 100)  # e.g. non-landmark mass of 100 landmark photos
    t = _budget_threshold(values, 100, loss=0.02, lo=0.0, hi=1.0, default=0.5)
    assert (values > t).sum() <= 2 and (values > t - 0.011).sum() > 2  # the lowest threshold within budget
    assert _budget_threshold(values, 100, 0.0, 0.0, 1.0, 0.5) == pytest.approx(0.99)  # no budget: above all
    assert _budget_threshold(values, 100, 0.02, 0.995, 0.999, 0.5) == 0.995  # clipped
    assert _budget_threshold(np.array([0.1]), 100, 0.02, 0.5, 0.9, 0.7) == 0.5  # few candidates: lower bound
    assert _budget_threshold(np.array([]), 0, 0.02, 0.5, 0.9, 0.7) == 0.7  # nothing to fit on: default


def test_fit_grading_separates_landmarks_from_non_landmarks():
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for _i in range(40):  # landmarks: the same label five times, high similarity
        rows.append(([3] * 5, sorted(rng.uniform(0.75, 0.95, 5))[::-1]))
        truth.append(3)
    for _i in range(40):  # non-landmarks: mixed labels, and some high similarities
        labels = [3, 1, 2, 3, 4]
        rows.append((labels, sorted(rng.uniform(0.6, 0.97, 5))[::-1]))
        truth.append(None)
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows])
    t1, t2, gap = fit_grading(labels, scores, truth, k=5)
    assert t1 >= t2
    assert gap > 0.95
    # plain kNN (no grading) ranks many non-landmarks above landmarks on the same data
    from landmark.metrics import global_average_precision
    from landmark.recognition.knn import knn_vote

    votes = knn_vote(labels, scores, 5)
    plain = global_average_precision(
        {str(i): (v.landmark_id, v.score) for i, v in enumerate(votes)}, {str(i): t for i, t in enumerate(truth)}
    )
    assert gap > plain + 0.1


def test_frequent_rerank_is_judged_by_validation_gap():
    from landmark.recognition.calibrate import grading_gap

    rows = [([1] * 5, [0.95] * 5, 1)] * 10  # landmark 1: ten A1 queries, so it is "frequent"
    rows += [([1] * 5, [0.86] * 5, None)] * 3  # non-landmarks that look like it (A2, lower similarity)
    rows += [([2] * 5, [0.88] * 5, 2)] * 3  # landmark 2 (A2, higher similarity)
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows])
    truth = [r[2] for r in rows]
    plain = grading_gap(labels, scores, truth, 5, 0.9, 0.85)
    frequent = grading_gap(labels, scores, truth, 5, 0.9, 0.85, frequent_min=5)
    assert plain == pytest.approx(1.0)  # A1, then A2 by similarity: every landmark first
    assert frequent < plain  # the frequent landmark's false hits jump the queue
    assert grading_gap(labels, scores, truth, 5, 0.9, 0.85, frequent_min=20) == pytest.approx(plain)  # none frequent


def _fake_store(tmp_path, *members):
    """A store-like object whose config names ``members``: (backbone, val_ids or None for pretrained[, the
    split it was trained on])."""
    import types

    import torch

    from landmark.config import Config, ModelConfig

    models = []
    folder = (
        tmp_path / f"store{len(list(tmp_path.iterdir()))}"
    )  # new files each time: the ids are cached per file version
    folder.mkdir()
    for i, (backbone, val_ids, *split) in enumerate(members):
        ckpt = None
        if val_ids is not None:
            ckpt = folder / f"model{i}.pt"
            torch.save(
                {
                    "model_config": {},
                    "state_dict": {},
                    "val_ids": list(val_ids),
                    **({"train_split": split[0]} if split else {}),
                },
                ckpt,
            )
        models.append(ModelConfig(backbone=backbone, checkpoint=str(ckpt) if ckpt else None))
    return types.SimpleNamespace(config=Config(model=models[0], ensemble=tuple(models[1:])))


def test_held_out_by_an_ensemble_is_what_no_trained_member_trained_on(tmp_path, caplog):
    from landmark.recognition.holdout import held_out_by_model

    lite2, lite1, mnv2 = "tf_efficientnet_lite2", "tf_efficientnet_lite1", "mobilenet_v2"
    assert held_out_by_model(_fake_store(tmp_path, (lite2, None))) is None
    assert held_out_by_model(_fake_store(tmp_path, (lite2, ["a", "b", "c"]))) == {"a", "b", "c"}
    # a trained member that held out other photos trained on some of the model's held-out ones
    both = _fake_store(tmp_path, (lite2, ["a", "b", "c"]), (lite1, ["b", "c", "d"]), (mnv2, None))
    assert held_out_by_model(both) == {"b", "c"}
    # a pretrained model with a trained member: the member's held-out photos
    assert held_out_by_model(_fake_store(tmp_path, (lite2, None), (lite1, ["d"]))) == {"d"}
    # a member that records none (trained on every photo) leaves nothing known to be held out
    assert held_out_by_model(_fake_store(tmp_path, (lite2, ["a"]), (lite1, []))) is None
    with caplog.at_level("WARNING"):
        assert held_out_by_model(_fake_store(tmp_path, (lite2, ["a"]), (lite1, ["b"]))) == set()
    assert "no photo in common" in caplog.text
    # a member trained on pseudo-landmarks of the index split trained on none of the labelled photos
    assert held_out_by_model(_fake_store(tmp_path, (lite2, ["a", "b"]), (lite1, ["x"], "index"))) == {"a", "b"}
    assert held_out_by_model(_fake_store(tmp_path, (lite1, ["x"], "index"))) is None


def test_learned_whitening_holds_out_what_calibrations_validate_on(tmp_path, caplog):
    import dataclasses
    import types
    from pathlib import Path

    from landmark.config import WhiteningConfig
    from landmark.data.manifests import ImageRecord
    from landmark.data.splits import split_by_photo
    from landmark.features.whitening import learn_labelled_whitening
    from landmark.recognition.holdout import model_validation_ids, validation_holdout

    labelled = [ImageRecord(f"p{i}", Path(f"/x/p{i}.jpg"), i % 4) for i in range(40)]
    pretrained = _fake_store(tmp_path, ("tf_efficientnet_lite2", None))
    by_photo = {r.id for r in split_by_photo(labelled, 0.15, 2, 0).val}
    assert validation_holdout(pretrained.config, labelled) == by_photo
    # a trained model's held-out photos, when they are this dataset's
    trained = _fake_store(tmp_path, ("tf_efficientnet_lite2", ["p1", "p2", "p3", "p5"]))
    assert validation_holdout(trained.config, labelled) == {"p1", "p2", "p3", "p5"}
    # a model trained on another dataset: the split by photo
    other = _fake_store(tmp_path, ("tf_efficientnet_lite2", ["q1", "q2", "p1"]))
    assert validation_holdout(other.config, labelled) == by_photo

    # a store with a learned whitening validates on the photos its file records, whatever else
    x = np.random.default_rng(0).normal(size=(40, 8))
    root = tmp_path / "lw"
    root.mkdir()
    learn_labelled_whitening(x, np.arange(40) % 4, 4, shrinkage=0.1, held_out=("p1", "p7", "p9")).save(
        root / "whitening.npz"
    )
    config = dataclasses.replace(other.config, whitening=WhiteningConfig(kind="learned"))
    store = types.SimpleNamespace(config=config, root=root)
    keys = [r.id for r in labelled]
    assert model_validation_ids(store, keys) == {"p1", "p7", "p9"}  # not the split by photo other stores fall to
    assert model_validation_ids(store, keys[:5]) == {"p1"}
    with caplog.at_level("WARNING"):
        assert model_validation_ids(store, ["p2", "p3"]) == set()
    assert "learned on" in caplog.text
    # a PCA whitening holds nothing out: the model's rule applies (this model's photos are not these)
    from landmark.features.whitening import learn_whitening

    learn_whitening(x, 4).save(root / "whitening.npz")
    pca_store = types.SimpleNamespace(
        config=dataclasses.replace(config, whitening=WhiteningConfig(kind="pca")), root=root
    )
    assert model_validation_ids(pca_store, keys) == set()
