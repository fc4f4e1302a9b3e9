"""The Python API on a plain folder of photos (one sub-folder per landmark)."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

import landmark
from landmark.config import load_config

pytestmark = pytest.mark.slow  # builds stores from real photos


def test_folder_store_recognises_and_searches(gldv2_root, fast_overrides, tmp_path):
    names = {47378: "Eiffel_Tower", 90396: "Stonehenge", 55350: "Sydney_Opera_House"}
    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    held_out = {}
    for lab, name in names.items():
        ids = [r["id"] for r in rows if int(r["landmark_id"]) == lab][:7]
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in ids[:6]:
            os.symlink(gldv2_root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg", tmp_path / "photos" / name / f"{i}.jpg")
        held_out[lab] = gldv2_root / "train" / ids[6][0] / ids[6][1] / ids[6][2] / f"{ids[6]}.jpg"

    lm, report = landmark.Landmarks.build(
        tmp_path / "photos", tmp_path / "store", load_config(overrides=fast_overrides), progress=False
    )
    assert report.added == {"db": 18} and not report.failures
    assert set(lm.store.label_names().values()) == set(names.values())

    # reopen from disk, as a later process would; queries as paths and as in-memory images
    lm = landmark.open(tmp_path / "store")
    paths = [str(p) for p in held_out.values()]
    recs = lm.recognize(paths + [Image.open(held_out[90396])])
    assert [r.name for r in recs[:3]] == [names[lab] for lab in held_out]
    assert recs[3].name == "Stonehenge" and abs(recs[3].score - recs[1].score) < 1e-4
    assert all(0 < r.score <= 1 and r.neighbours for r in recs)

    hits = lm.search(paths[:1], k=4)[0]
    assert hits.error is None and len(hits.matches) == 4
    assert [m.name for m in hits.matches[:3]] == ["Eiffel_Tower"] * 3
    assert np.all(np.diff([m.score for m in hits.matches]) <= 1e-6)
    # stored paths are absolute, so a store opened from another working directory still finds its photos
    assert all(os.path.isabs(m.path) and os.path.isfile(m.path) for m in hits.matches)

    # a photo that cannot be read is reported in place, the others still answered
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    out = lm.recognize([str(tmp_path / "bad.jpg"), paths[0]])
    assert out[0].error and out[0].landmark_id is None
    assert out[1].name == "Eiffel_Tower"


def test_search_applies_dba_and_qe_and_follows_writes(mini_store, mini_gldv2, eiffel_query, tmp_path):
    import shutil

    from landmark.retrieval import ExpandedSearch

    shutil.copytree(mini_store, tmp_path / "store")
    lm = landmark.open(tmp_path / "store")
    assert lm.searching.expands_by_default  # the default config: DBA + alpha-QE on, exact index
    query = lm.embed([eiffel_query]).vectors
    got = lm.search([str(eiffel_query)], k=8, rerank=False)[0]
    want = ExpandedSearch(lm.store, lm.config.expansion, vote_k=lm.recognising.recognition_config.k).rank(query, 8)[0]
    assert [m.id for m in got.matches] == want.keys
    assert [m.score for m in got.matches] == pytest.approx(want.scores, abs=1e-5)
    plain = lm.search([str(eiffel_query)], k=8, rerank=False, expand=False)[0]
    assert [m.score for m in plain.matches] != pytest.approx([m.score for m in got.matches], abs=1e-4)
    with open(mini_gldv2 / "retrieval_solution.csv", newline="") as fh:  # the unlabelled index photos of it
        same_place = next(r["images"].split() for r in csv.DictReader(fh) if r["id"] == eiffel_query.stem)
    assert all(m.name == "Eiffel_Tower" or m.id in same_place for m in got.matches[:3])

    # a photo added later is searched at once: the augmented database follows the store's generation
    lm.add_photos([eiffel_query], landmark_id=47378)
    again = lm.search([str(eiffel_query)], k=3, rerank=False)[0]
    assert lm.searching.expanded_search().generation == lm.store.generation and len(
        lm.searching.expanded_search().keys
    ) == len(lm.store)
    assert str(eiffel_query.resolve()) in [
        m.path for m in again.matches
    ]  # not always first: DBA mixes it with its neighbours
    # larger stores than expansion.search_max search without expansion unless asked (DBA is quadratic)
    lm.searching.set_expansion_config(dataclasses.replace(lm.config.expansion, search_max=len(lm.store) - 1))
    assert not lm.searching.expands_by_default
    assert lm.search([str(eiffel_query)], k=1, rerank=False)[0].matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_reopening_a_trained_model_s_store_without_its_model_says_how(fast_overrides, tmp_path):
    from landmark.index import Store, StoreError
    from landmark.models import build_model, save_checkpoint

    cfg = load_config(overrides=fast_overrides)
    save_checkpoint(tmp_path / "model.pt", build_model(cfg.model), cfg.model, {"classes": []})
    trained = load_config(overrides=fast_overrides + [f"model.checkpoint={tmp_path / 'model.pt'}"])
    landmark.Landmarks.create(tmp_path / "store", trained).store.close()
    with pytest.raises(StoreError, match=rf"give its model again \(--model {tmp_path / 'model.pt'}\)"):
        landmark.Landmarks.create(tmp_path / "store", cfg)  # as `landmark evaluate --out` without --model
    with pytest.raises(StoreError) as info:  # the same model, other settings: no such hint
        landmark.Landmarks.create(
            tmp_path / "store", dataclasses.replace(trained, model=dataclasses.replace(trained.model, gem_p=4.0))
        )
    assert "--model" not in str(info.value) and "--overwrite" in str(info.value)
    assert len(Store.open(tmp_path / "store")) == 0


def test_query_views_add_the_photo_read_at_zoom_times_the_size(mini_store, eiffel_query):
    from PIL import Image

    from landmark.data.manifests import ImageRecord
    from landmark.features.extract import REGIONS_EXTRA
    from landmark.features.pipeline import zoomed

    lm = landmark.open(mini_store)
    assert lm.recognising.recognition_config.zoom == 1.0  # off by default
    cfg = dataclasses.replace(lm.recognising.recognition_config, zoom=2.0)
    lm.recognising.set_recognition_config(cfg)
    res = lm.embedding.query_views([ImageRecord("q", eiffel_query)], progress=False)
    n = (
        lm.extractor.extract([ImageRecord("q", eiffel_query)], regions=cfg.regions, progress=False)
        .extras[REGIONS_EXTRA]
        .shape[1]
    )
    views = res.extras[REGIONS_EXTRA][0].astype(np.float32)
    assert views.shape[0] == n + 1 + n  # regions, the zoomed photo, its regions
    big = zoomed(lm.extractor, 2.0)
    assert big.cfg.image_size == 2 * lm.extractor.cfg.image_size and big.net is lm.extractor.net
    want = big.extract_images([Image.open(eiffel_query).convert("RGB")])[0]
    assert np.allclose(views[n], want, atol=2e-3) and not np.allclose(views[n], res.vectors[0], atol=2e-2)
    # in-memory photos get the same views; without zoom only the regions
    _, extras = lm.embedding.query_views_of_images([Image.open(eiffel_query).convert("RGB")])
    assert np.allclose(extras[REGIONS_EXTRA][0].astype(np.float32), views, atol=2e-3)
    lm.recognising.set_recognition_config(dataclasses.replace(cfg, zoom=1.0))
    assert (
        lm.embedding.query_views([ImageRecord("q", eiffel_query)], progress=False).extras[REGIONS_EXTRA].shape[1] == n
    )


def test_open_warms_what_the_first_query_would_wait_for(mini_store):
    from landmark.features.pipeline import model_extractor

    cold = landmark.Landmarks.open(mini_store, warm=False)
    assert (
        model_extractor(cold.extractor).trunk._engines == {} and cold.recognising._recognizer is None
    )  # made at the first query
    warm = landmark.Landmarks.open(mini_store)
    assert model_extractor(warm.extractor).trunk._engines and warm.recognising._recognizer is not None
    assert warm.store.generation == cold.store.generation  # warming writes nothing
