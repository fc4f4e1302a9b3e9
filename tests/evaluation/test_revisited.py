import math
import pickle

import numpy as np
import pytest
from PIL import Image

from landmark.data.manifests import DatasetError
from landmark.evaluation.revisited import (
    QueryTruth,
    RevisitedTruth,
    average_precision,
    crop_query,
    evaluate_rankings,
    evaluate_revisited,
    load_ground_truth,
    positive_ranks,
    precision_at,
    setup_sets,
)


def _reference_ap(ranking, positives, ignored):
    """Independent restatement: walk the list, skip ignored items, integrate precision by trapezoids."""
    positives, ignored = set(positives), set(ignored) - set(positives)
    rank, found, ap = 0, 0, 0.0
    for item in ranking:
        if item in ignored:
            continue
        if item in positives:
            before = 1.0 if rank == 0 else found / rank
            found += 1
            after = found / (rank + 1)
            ap += (before + after) / 2 / len(positives)
        rank += 1
    return ap


def test_ap_by_hand():
    # ranking p n p j p with 3 positives: junk-free ranks 0, 2, 3
    ranking = [10, 11, 12, 13, 14]
    r = positive_ranks(ranking, np.array([10, 12, 14]), np.array([13]))
    assert r.tolist() == [0, 2, 3]
    # (1+1)/2/3 + (1/2+2/3)/2/3 + (2/3+3/4)/2/3 = 24/72 + 14/72 + 17/72
    assert average_precision(r, 3) == pytest.approx(55 / 72, abs=1e-12)
    # a positive never retrieved still counts in the denominator
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)
    assert average_precision(np.array([1]), 1) == pytest.approx((0.0 + 0.5) / 2)


def test_precision_at_k_by_hand():
    # positives at 1-based ranks 1, 3, 4: mP@1 = 1, mP@5 uses min(5, 4) = 4 -> 3/4, mP@10 -> 3/4
    assert precision_at(np.array([0, 2, 3]), (1, 5, 10)).tolist() == [1.0, 0.75, 0.75]


def test_setups():
    q = QueryTruth((0, 0, 1, 1), np.array([1, 2]), np.array([3]), np.array([4]))
    assert [sorted(s.tolist()) for s in setup_sets(q, "easy")] == [[1, 2], [3, 4]]
    assert [sorted(s.tolist()) for s in setup_sets(q, "medium")] == [[1, 2, 3], [4]]
    assert [sorted(s.tolist()) for s in setup_sets(q, "hard")] == [[3], [1, 2, 4]]


def test_evaluate_rankings_hand_example():
    # db of 6; query 0: easy {0}, hard {2}, junk {1}; query 1: easy {}, hard {}, (skipped everywhere)
    truth = RevisitedTruth(
        "toy",
        [f"d{i}" for i in range(6)],
        ["q0", "q1"],
        [
            QueryTruth((0, 0, 1, 1), np.array([0]), np.array([2]), np.array([1])),
            QueryTruth((0, 0, 1, 1), np.array([], np.int64), np.array([], np.int64), np.array([], np.int64)),
        ],
    )
    res = evaluate_rankings([[1, 3, 0, 2, 4, 5], [0, 1, 2, 3, 4, 5]], truth)
    # easy: ignore {1, 2}: ranking 3 0 4 5 -> positive at rank 1: AP = (0 + 1/2)/2 = 1/4
    assert res["easy"]["map"] == pytest.approx(0.25)
    # medium: ignore {1}: 3 0 2 ... -> ranks 1, 2: ((0 + 1/2)/2 + (1/2 + 2/3)/2)/2 = (1/4 + 7/12)/2
    assert res["medium"]["map"] == pytest.approx((0.25 + 7 / 12) / 2)
    # hard: ignore {1, 0}: 3 2 ... -> rank 1: 1/4
    assert res["hard"]["map"] == pytest.approx(0.25)
    assert math.isnan(res["easy"]["aps"][1])


@pytest.fixture(scope="module")
def oxford(revisited_root):
    return load_ground_truth(revisited_root / "roxford5k" / "gnd_roxford5k.pkl")


def test_real_ground_truth_matches_reference_on_random_rankings(oxford, revisited_root):
    assert len(oxford.imlist) == 4993 and len(oxford.qimlist) == 70
    with open(revisited_root / "roxford5k" / "gnd_roxford5k.pkl", "rb") as fh:
        raw = pickle.load(fh)
    rng = np.random.default_rng(0)
    n = len(oxford.imlist)
    rankings = []
    for g in raw["gnd"]:
        # a ranking that puts some positives and junk early, the rest shuffled: mid-range APs
        early = rng.permutation(np.concatenate([g["easy"], g["hard"], g["junk"]]))[:30]
        rest = rng.permutation(np.setdiff1d(np.arange(n), early))
        rankings.append(np.concatenate([early, rest]))
    res = evaluate_rankings(rankings, oxford)
    for setup, pos_keys, junk_keys in [
        ("easy", ["easy"], ["junk", "hard"]),
        ("medium", ["easy", "hard"], ["junk"]),
        ("hard", ["hard"], ["junk", "easy"]),
    ]:
        aps = []
        for ranking, g in zip(rankings, raw["gnd"]):
            pos = np.concatenate([g[k] for k in pos_keys])
            if len(pos):
                aps.append(
                    _reference_ap(ranking.tolist(), pos.tolist(), np.concatenate([g[k] for k in junk_keys]).tolist())
                )
        assert res[setup]["map"] == pytest.approx(float(np.mean(aps)), abs=1e-6)
        assert 0.05 < res[setup]["map"] < 0.95


def test_perfect_ranking_scores_one_in_every_setup(oxford):
    n = len(oxford.imlist)
    rankings = []
    for q in oxford.queries:
        first = np.concatenate([q.easy, q.hard])
        rankings.append(np.concatenate([first, np.setdiff1d(np.arange(n), first)]))
    res = evaluate_rankings(rankings, oxford)
    assert res["easy"]["map"] == pytest.approx(1.0) and res["medium"]["map"] == pytest.approx(1.0)
    assert res["hard"]["map"] == pytest.approx(1.0)
    # hard first then easy: Hard stays perfect (easy ignored), Easy too (hard ignored), Medium too
    reverse = [
        np.concatenate([q.hard, q.easy, np.setdiff1d(np.arange(n), np.concatenate([q.easy, q.hard]))])
        for q in oxford.queries
    ]
    assert evaluate_rankings(reverse, oxford)["easy"]["map"] == pytest.approx(1.0)


def test_crop_query_to_bbx(oxford, revisited_root):
    jpg = revisited_root / "roxford5k" / "jpg"
    name = next(n for n in oxford.qimlist if (jpg / f"{n}.jpg").is_file())
    q = oxford.queries[oxford.qimlist.index(name)]
    img = Image.open(jpg / f"{name}.jpg").convert("RGB")
    crop = crop_query(img, q.bbx)
    x1, y1, x2, y2 = q.bbx
    assert abs(crop.size[0] - (x2 - x1)) <= 2 and abs(crop.size[1] - (y2 - y1)) <= 2
    assert np.array_equal(np.asarray(crop)[0, 0], np.asarray(img)[int(y1), int(x1)])
    with pytest.raises(ValueError, match="empty"):
        crop_query(img, (10, 10, 10, 50))


def test_damaged_ground_truth_and_missing_photos(tmp_path, revisited_root):
    (tmp_path / "roxford5k").mkdir()
    (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": []}))
    with pytest.raises(DatasetError, match="gnd_roxford5k.pkl"):
        load_ground_truth(tmp_path / "roxford5k" / "gnd_roxford5k.pkl")
    # the shared copy has only 10 query photos: the run names the missing database photos
    with pytest.raises(DatasetError, match="database photos are missing"):
        evaluate_revisited(revisited_root, extractor=None, datasets=["roxford5k"])


def test_cli_names_missing_photos(revisited_root):
    from typer.testing import CliRunner

    from landmark.cli import app

    res = CliRunner().invoke(
        app,
        [
            "evaluate-revisited",
            str(revisited_root),
            "-d",
            "roxford5k",
            "--set",
            "model.backbone=tf_efficientnet_lite0",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 2
    assert "database photos are missing" in res.output
