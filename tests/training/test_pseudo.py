"""Pseudo-landmarks from clustering unlabelled photos, and training on them."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import pytest

from landmark.config import ConfigError
from landmark.data import DatasetError, ImageRecord
from landmark.data.manifests import PSEUDO_LABEL_OFFSET as LABEL_OFFSET
from landmark.data.manifests import read_labels
from landmark.models import load_checkpoint
from landmark.training import load_train_config, train
from landmark.training.loop import training_records
from landmark.training.pseudo import (
    ClusterConfig,
    choose_threshold,
    cluster_purity,
    mutual_knn_clusters,
    relabel,
    write_labels,
)


def on_circle(degrees) -> np.ndarray:
    a = np.radians(np.asarray(degrees, float))
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


# two tight groups 36 degrees apart, H half-way (18 degrees, cos 0.951, from the nearest of each), a pair, a loner
A, B, H, PAIR, LONE = [0, 2, 4], [40, 42, 44], [22], [120, 121], [250]
POINTS = on_circle(A + B + H + PAIR + LONE)


def test_groups_become_clusters_numbered_by_size_and_small_ones_stay_out():
    c = mutual_knn_clusters(on_circle(A + B + [41, 43] + PAIR + LONE), threshold=0.9, neighbours=2, min_size=3)
    # B and its two extra points form the larger cluster (0); A is cluster 1; the pair and the loner are in none
    assert c.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, -1, -1, -1]
    assert mutual_knn_clusters(POINTS[:0], 0.9).shape == (0,)


def test_only_mutual_neighbours_are_joined():
    # with k=2, H's nearest (A's 4 and B's 40) have their own group as their 2 nearest: H joins nothing
    two = mutual_knn_clusters(POINTS, threshold=0.9, neighbours=2, min_size=3)
    assert two[:7].tolist() == [0, 0, 0, 1, 1, 1, -1]
    # with k=3, H is among their 3 nearest too: the edges are mutual and chain A, H and B into one cluster
    three = mutual_knn_clusters(POINTS, threshold=0.9, neighbours=3, min_size=3)
    assert three[:7].tolist() == [0] * 7
    # ... unless the threshold is above H's similarity to them
    assert mutual_knn_clusters(POINTS, threshold=0.96, neighbours=3, min_size=3)[:7].tolist() == [0, 0, 0, 1, 1, 1, -1]


def test_purity_and_coverage():
    assert cluster_purity(np.array([0, 0, 0, 1, 1, -1]), [5, 5, 6, 7, 7, 8]) == pytest.approx((4 / 5, 5 / 6))
    assert cluster_purity(np.array([-1, -1]), [1, 2]) == (1.0, 0.0)


def test_threshold_is_the_lowest_giving_pure_clusters_of_labelled_photos():
    labels = [1, 1, 1, 2, 2, 2, 1, 3, 3, 4]
    cfg = ClusterConfig(neighbours=3, min_size=3, purity=0.99, candidates=(0.99, 0.9, 0.95, 0.96))
    choice = choose_threshold(POINTS, labels, cfg)
    # 0.9 and 0.95 (< cos 18 degrees) chain A, H and B: 4 of 7 carry the majority label; 0.96 separates them
    assert [r["threshold"] for r in choice.rows] == [0.9, 0.95, 0.96, 0.99]
    assert [round(r["purity"], 3) for r in choice.rows] == [round(4 / 7, 3), round(4 / 7, 3), 1.0, 1.0]
    assert choice.threshold == 0.96
    with pytest.raises(DatasetError, match="at least 2 landmarks"):
        choose_threshold(POINTS, [1] * len(POINTS), cfg)


def test_no_pure_threshold_is_said(caplog):
    labels = [1, 1, 1, 2, 2, 2, 1, 3, 3, 4]
    with caplog.at_level("WARNING"):
        choice = choose_threshold(POINTS, labels, ClusterConfig(neighbours=3, min_size=3, candidates=(0.9, 0.95)))
    assert choice.threshold == 0.95 and "no clustering threshold of 0.9, 0.95 makes clusters" in caplog.text


@pytest.mark.parametrize(
    "bad", [dict(neighbours=0), dict(min_size=1), dict(threshold=1.5), dict(purity=0.0), dict(candidates=())]
)
def test_cluster_settings_out_of_range_are_refused(bad):
    from landmark.training.pseudo import check_cluster

    with pytest.raises(ConfigError):
        check_cluster(ClusterConfig(**bad))


def test_labels_file_round_trip_and_relabel(tmp_path):
    path = tmp_path / "sub" / "clusters.csv"
    assert write_labels(path, ["a", "b", "c", "d"], np.array([1, -1, 0, 1])) == 3
    labels = read_labels(path)
    assert labels == {"a": LABEL_OFFSET + 1, "c": LABEL_OFFSET, "d": LABEL_OFFSET + 1}
    recs = [ImageRecord(i, None) for i in "abcd"]
    assert [(r.id, r.landmark_id) for r in relabel(recs, labels)] == [(i, labels[i]) for i in "acd"]


@pytest.fixture()
def index_gldv2(gldv2_root, tmp_path):
    """A GLDv2 root whose index split holds 6 photos of each of 3 landmarks, with a clusters file for them."""
    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    picked = [r["id"] for lab in ("47378", "90396", "55350") for r in [x for x in rows if x["landmark_id"] == lab][:6]]
    root = tmp_path / "gldv2"
    for i in picked:
        dst = root / "index" / i[0] / i[1] / i[2] / f"{i}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(gldv2_root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg", dst)
    (root / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in picked))
    (root / "train.csv").write_text("id,url,landmark_id\n")
    clusters = np.repeat([0, 1, 2], 6)
    clusters[-1] = -1  # one photo in no cluster: not trained on
    write_labels(tmp_path / "clusters.csv", picked, clusters)
    return root, tmp_path / "clusters.csv", picked


def test_training_on_a_clustered_split(index_gldv2, tmp_path):
    root, labels, picked = index_gldv2
    cfg = load_train_config(
        "cpu-mini",
        overrides=[
            "model.backbone=tf_efficientnet_lite0",
            "data.image_size=64",
            "eval_image_size=96",
            "data.num_workers=0",
            "cache_views=1",
            "freeze_stages=5",
            "optim.batch_size=8",
            "optim.epochs=1",
            "data.split=index",
            f"data.labels={labels}",
        ],
    )
    records = training_records(root, cfg)
    assert [r.id for r in records] == picked[:-1] and {r.landmark_id for r in records} == {
        LABEL_OFFSET + c for c in range(3)
    }
    result = train(root, tmp_path / "run", cfg, progress=False)
    _, payload = load_checkpoint(result.model_path)
    assert payload["classes"] == [LABEL_OFFSET, LABEL_OFFSET + 1, LABEL_OFFSET + 2]
    assert set(payload["val_ids"]) < set(picked[:-1]) and payload["train_split"] == "index"
    # its head names pseudo-landmarks, none of a store's: recognition takes no classifier from it
    from landmark.recognition.classifier import LandmarkClassifier

    assert LandmarkClassifier.from_checkpoint(result.model_path) is None
    import torch  # ... also when trained on pseudo-landmarks of the train split

    state = torch.load(result.model_path, weights_only=False)
    torch.save(state | {"train_split": "train"}, tmp_path / "as-train.pt")
    assert LandmarkClassifier.from_checkpoint(tmp_path / "as-train.pt") is None
    torch.save(state | {"train_split": "train", "classes": [1, 2, 3]}, tmp_path / "real.pt")
    assert LandmarkClassifier.from_checkpoint(tmp_path / "real.pt") is not None
    # clusters written anew cannot resume the run trained on the old ones: other classes, or the same
    # cluster ids naming other photos
    for clusters in (np.repeat([0, 1, 2, 3], [5, 5, 4, 4]), np.repeat([0, 1, 2], 6)[::-1]):
        write_labels(labels, picked, clusters)
        with pytest.raises(ConfigError, match="other photos or landmarks than"):
            train(root, tmp_path / "run", dataclasses.replace(cfg), progress=False, resume=True)


def test_clustered_split_errors(index_gldv2, tmp_path):
    root, labels, _ = index_gldv2
    (tmp_path / "other.csv").write_text("id,landmark_id\nnot-a-photo,1\n")
    with pytest.raises(DatasetError, match="names none of the photos"):
        training_records(
            root, load_train_config("cpu-mini", overrides=["data.split=index", f"data.labels={tmp_path / 'other.csv'}"])
        )
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="a folder of photos, not a GLDv2 root"):
        training_records(folder, load_train_config("cpu-mini", overrides=["data.split=index", f"data.labels={labels}"]))


def test_a_store_split_clusters_as_its_vectors_do_with_excluded_photos_left_out(tmp_path):
    from landmark.config import load_config
    from landmark.index import Store
    from landmark.training.pseudo import cluster_store
    from store_helpers import SIG

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    x = np.concatenate([c + 0.1 * rng.normal(size=(6, 8)) for c in centres] + [rng.normal(size=(6, 8))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"i{n:02d}" for n in range(len(x))]
    store = Store.create(tmp_path / "s", load_config(), SIG)
    store.add(ids, x, split="index")
    labelled = (x[:12] + 0.05 * rng.normal(size=(12, 8))).astype(np.float32)
    store.add(
        [f"t{n}" for n in range(12)],
        labelled / np.linalg.norm(labelled, axis=1, keepdims=True),
        landmark_ids=[0] * 6 + [1] * 6,
        split="train",
    )  # another split: never a neighbour here
    cfg = ClusterConfig(neighbours=5, threshold=0.6, min_size=3)
    res = cluster_store(store, "index", cfg)
    assert res.ids == ids and res.chosen_on == "given"
    assert res.clusters.tolist() == mutual_knn_clusters(x, 0.6, 5, 3).tolist()
    assert sorted(np.bincount(res.clusters[res.clusters >= 0]).tolist()) == [6, 6, 6, 6]
    # excluded photos are neither clustered nor neighbours: as if the split held only the others
    drop = set(ids[::3])
    kept = [i for i in ids if i not in drop]
    res = cluster_store(store, "index", cfg, exclude=drop)
    assert res.ids == kept
    assert res.clusters.tolist() == mutual_knn_clusters(x[[ids.index(i) for i in kept]], 0.6, 5, 3).tolist()
    # without a threshold it is chosen on the labelled photos
    chosen = cluster_store(store, "index", ClusterConfig(neighbours=4, min_size=3))
    assert chosen.chosen_on == "12 labelled photos" and chosen.choice.threshold == chosen.threshold
    with pytest.raises(DatasetError, match="no photos of split 'test'"):
        cluster_store(store, "test", cfg)


def test_threshold_sample_keeps_whole_landmarks():
    from landmark.training.pseudo import whole_landmarks

    label = {f"{lab}-{i}": lab for lab, n in ((1, 5), (2, 3), (3, 4), (4, 6)) for i in range(n)}
    ids = sorted(label)
    assert whole_landmarks(ids, label, 100) == ids
    for seed in range(5):
        pick = whole_landmarks(ids, label, 8, seed)
        assert 0 < len(pick) <= 8
        landmarks = {label[k] for k in pick}
        assert pick and all(
            sum(label[k] == lab for k in pick) == sum(label[k] == lab for k in ids) for lab in landmarks
        )
    assert len(whole_landmarks(ids, {k: 1 for k in ids}, 3)) == len(ids)  # one landmark larger than the limit
