"""The parts of the pipeline over one store (building, embedding, searching), on real stores made with the
stand-in network (a photo's vector is a function of its bytes), so each test runs in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landmark.api import Landmarks
from landmark.config import load_config
from landmark.index import StoreError
from stand_ins import noise_photos, unit_of, use_content_extractor

GLOBAL = ["whitening.kind=none", "local.enabled=false", "rerank.enabled=false", "category.enabled=false"]


@pytest.fixture
def parts(monkeypatch, tmp_path):
    """A store of 6 noise photos (landmark 1), its parts, and the photos."""
    use_content_extractor(monkeypatch)
    photos = noise_photos(tmp_path / "photos", [f"p{i}.png" for i in range(6)])
    lm = Landmarks.create(tmp_path / "store", load_config(overrides=GLOBAL))
    lm.add_photos(photos, landmark_id=1, name="One", progress=False)
    return lm, photos


def test_search_ranks_by_inner_product_and_answers_each_query_in_its_place(parts, tmp_path):
    lm, photos = parts
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    out = lm.searching.search([photos[3], broken, photos[1]], k=4, expand=False)
    assert [o.query for o in out] == [str(photos[3]), str(broken), str(photos[1])]  # queries are named by path
    assert out[1].error and not out[1].matches  # the unreadable one is reported in its place
    for o, p in ((out[0], photos[3]), (out[2], photos[1])):
        q = unit_of(p.read_bytes())
        want = sorted(((float(unit_of(s.read_bytes()) @ q), s.stem) for s in photos), reverse=True)[:4]
        assert [m.id for m in o.matches] == [w[1] for w in want]  # the photo itself first, then by similarity
        assert np.allclose([m.score for m in o.matches], [w[0] for w in want], atol=1e-5)
        assert all(m.landmark_id == 1 and m.name == "One" for m in o.matches)


def test_search_of_an_in_memory_photo_and_its_refusals(parts):
    lm, photos = parts
    image = Image.open(photos[2]).convert("RGB")
    (got,) = lm.searching.search([image], k=1, expand=False)
    assert got.error is None and len(got.matches) == 1
    with pytest.raises(ValueError, match="k must be at least 1"):
        lm.searching.search([photos[0]], k=0)
    with pytest.raises(StoreError, match="no local features"):
        lm.searching.search([photos[0]], rerank=True)


def test_expansion_by_default_only_on_exact_stores_it_can_afford(parts):
    lm, _ = parts
    assert lm.searching.expands_by_default  # configured, exact, 6 photos
    lm.searching.set_expansion_config(load_config(overrides=["expansion.search_max=5"]).expansion)
    assert not lm.searching.expands_by_default  # DBA would be quadratic in more photos than that
    lm.searching.set_expansion_config(load_config(overrides=["expansion.dba=false", "expansion.qe=false"]).expansion)
    assert not lm.searching.expands_by_default


def test_an_add_skips_what_is_stored_and_keeps_another_photo_under_a_new_id(parts, tmp_path):
    lm, photos = parts
    again = lm.building.add_photos(photos[:2], progress=False)
    assert sum(again.added.values()) == 0 and [p.status for p in again.photos] == ["present", "present"]
    other = noise_photos(tmp_path / "elsewhere", ["p0.png"], seed=9)[0]  # same name, other content
    report = lm.building.add_photos([other], progress=False)
    (renamed,) = report.renamed
    assert renamed.id == "p0" and renamed.new_id.startswith("p0~") and renamed.new_id in lm.store.get([renamed.new_id])
    assert len(lm.store) == 7 and lm.building.remove(["p0", renamed.new_id, "unknown"]) == 2
    assert len(lm.store) == 5


def test_embedding_reports_unreadable_photos_and_embeds_the_rest_in_order(parts, tmp_path):
    lm, photos = parts
    broken = tmp_path / "b.png"
    broken.write_bytes(b"\x89PNG but not really")
    image = Image.open(photos[4]).convert("RGB")
    ids, vectors, errors, extras = lm.embedding.queries([photos[5], broken, image, photos[0]], progress=False)
    # the photos read from files first, then the in-memory ones (named by their place among the queries)
    assert ids == [str(photos[5]), str(photos[0]), "image-2"] and set(errors) == {str(broken)}
    assert np.allclose(vectors[0], unit_of(photos[5].read_bytes())) and np.allclose(
        vectors[1], unit_of(photos[0].read_bytes())
    )
    assert np.allclose(vectors[2], unit_of(image.tobytes())) and extras == {}
