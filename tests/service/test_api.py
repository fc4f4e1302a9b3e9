"""The HTTP API on a small real store: every endpoint, and every kind of bad input (4xx JSON, store unchanged)."""

from __future__ import annotations

import io
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from landmark.api import Landmarks
from landmark.index import Store
from landmark.index.local import LOCAL_DIR, LocalStore
from landmark.recognition.filters import PROBE_NAME
from landmark.service import ServiceSettings, create_app

pytestmark = pytest.mark.slow


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_work", ".lock"))
    return dst


def _upload(path: Path) -> dict:
    return {"photo": (path.name, path.read_bytes(), "image/jpeg")}


@pytest.fixture(scope="module")
def ro_store(mini_store, tmp_path_factory) -> Path:
    return _copy(mini_store, tmp_path_factory.mktemp("svc-ro") / "store")


@pytest.fixture(scope="module")
def client(ro_store):
    with TestClient(create_app(ro_store, ServiceSettings(thumbnail_size=96))) as c:
        yield c


@pytest.fixture
def rw(store_copy):
    """A client over a private store copy, with small limits for the bad-input cases."""
    settings = ServiceSettings(max_upload_bytes=400_000, max_pixels=2_000_000)
    with TestClient(create_app(store_copy, settings)) as c:
        yield c, store_copy


def _state(store: Path) -> tuple[int, int, list[str]]:
    with Store.open(store) as st:
        return st.generation, len(st), sorted(p.name for p in store.rglob("*") if p.is_file() and "uploads" in p.parts)


# -- health, metrics, docs, page -------------------------------------------------------------------
def test_health_reports_the_store(client, ro_store):
    h = client.get("/health").json()
    with Store.open(ro_store) as st:
        assert h["images"] == len(st) > 0
        assert h["generation"] == st.generation
    assert h["status"] == "ok" and h["landmarks"] >= 4


def test_metrics_are_prometheus_text_with_counts_latency_and_index_size(client):
    client.get("/health")
    client.get("/images/nope")
    text = client.get("/metrics").text
    assert 'landmark_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'route="/images/{image_id:path}",status="404"' in text
    assert "landmark_http_request_duration_seconds_bucket" in text
    images = next(line for line in text.splitlines() if line.startswith("landmark_index_images "))
    assert float(images.split()[1]) == client.get("/health").json()["images"]


def test_openapi_docs_list_the_endpoints(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # offline: assets come from the app
    js = next(part.split('"')[0] for part in docs.text.split('src="')[1:] if "swagger-ui-bundle.js" in part)
    assert client.get(js).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/recognize",
        "/search",
        "/images",
        "/images/{image_id}",
        "/images/{image_id}/thumbnail",
        "/images/{image_id}/matches/{other}",
        "/health",
        "/metrics",
        "/landmarks",
    ):
        assert p in paths, p


def test_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and 'id="file"' in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/recognize" in js.text
    assert client.get("/static/style.css").status_code == 200


# -- recognition and search ------------------------------------------------------------------------
def test_recognize_an_eiffel_photo(client, eiffel_query, ro_store):
    r = client.post("/recognize", files=_upload(eiffel_query))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["landmark_id"] == 47378 and body["name"] == "Eiffel_Tower"
    assert 0.0 < body["score"] <= 1.0 and "grade" in body
    scores = [m["score"] for m in body["matches"]]
    assert scores and scores == sorted(scores, reverse=True)
    assert body["matches"][0]["landmark_id"] == 47378
    rec = Landmarks.open(ro_store).recognize([str(eiffel_query)])[0]  # the service answers what the API does
    assert body["score"] == pytest.approx(rec.score, abs=1e-5) and body["grade"] == rec.grade
    # its neighbours are verified with local features: the evidence the non-landmark filters are weighed against
    verification = body["evidence"]["verification"]
    assert verification["needed"] == 8 and len(verification["inliers"]) == len(body["matches"])
    assert [m["inliers"] for m in body["matches"]] == verification["inliers"] == [m.inliers for m in rec.neighbours]
    assert body["grade"] != "non-landmark" or not verification["shows_landmark"]
    thumb = client.get(body["matches"][0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # the store has local features: the upload's keypoint matches with its best match come as a PNG
    assert body["token"] and body["evidence_available"] is True
    png = client.get(body["evidence_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 100


def test_recognize_another_landmark(client, stonehenge_query):
    body = client.post("/recognize", files=_upload(stonehenge_query)).json()
    assert body["landmark_id"] == 90396


def test_search_ranks_stored_photos(client, eiffel_query, ro_store):
    body = client.post("/search?k=7", files=_upload(eiffel_query)).json()
    assert len(body["matches"]) == 7
    scores = [m["score"] for m in body["matches"]]
    assert scores == sorted(scores, reverse=True)
    lm = Landmarks.open(ro_store)
    expected = [m.id for m in lm.search([str(eiffel_query)], k=7)[0].matches]
    assert [m["id"] for m in body["matches"]] == expected
    assert len(client.post("/search", files=_upload(eiffel_query)).json()["matches"]) == ServiceSettings().default_k


@pytest.mark.parametrize("k", [0, -1, 101])
def test_search_k_out_of_range(client, eiffel_query, k):
    r = client.post(f"/search?k={k}", files=_upload(eiffel_query))
    assert r.status_code == 422 and "k must be between 1 and 100" in r.json()["error"]


# -- browsing --------------------------------------------------------------------------------------
def test_image_metadata_thumbnail_and_photo(client, ro_store):
    with Store.open(ro_store) as st:
        key = st.keys("train")[0]
        row = st.get([key])[key]
    meta = client.get(f"/images/{key}").json()
    assert meta["id"] == key and meta["landmark_id"] == row.landmark_id and meta["split"] == "train"
    assert (meta["width"], meta["height"]) == (row.width, row.height)
    thumb = Image.open(io.BytesIO(client.get(meta["thumbnail"]).content))
    assert max(thumb.size) == 96
    assert thumb.size[0] / thumb.size[1] == pytest.approx(row.width / row.height, rel=0.05)
    photo = client.get(meta["photo"])
    assert photo.status_code == 200 and photo.content == Path(row.path).read_bytes()


def test_landmarks_and_paged_listing(client, ro_store):
    lms = client.get("/landmarks").json()["landmarks"]
    with Store.open(ro_store) as st:
        rows = st.get(st.keys())
    counts = {}
    for r in rows.values():
        counts[r.landmark_id] = counts.get(r.landmark_id, 0) + 1
    assert {lm_["landmark_id"]: lm_["images"] for lm_ in lms} == counts
    eiffel = next(lm_ for lm_ in lms if lm_["landmark_id"] == 47378)
    assert eiffel["name"] == "Eiffel_Tower" and rows[eiffel["cover"]].landmark_id == 47378
    page1 = client.get("/images?landmark_id=47378&limit=4").json()["images"]
    page2 = client.get("/images?landmark_id=47378&limit=4&offset=4").json()["images"]
    assert len(page1) == 4 and all(i["landmark_id"] == 47378 for i in page1 + page2)
    assert not {i["id"] for i in page1} & {i["id"] for i in page2}
    unl = client.get("/images?unlabelled=true&limit=500").json()["images"]
    assert len(unl) == counts.get(None, 0) and all(i["landmark_id"] is None for i in unl)
    assert client.get("/images?limit=0").status_code == 422
    for bad in (f"offset={2**64}", f"landmark_id={2**64}", "landmark_id=47378&unlabelled=true"):
        r = client.get(f"/images?{bad}")
        assert r.status_code == 422 and "error" in r.json(), bad


# -- keypoint evidence -----------------------------------------------------------------------------
def test_matches_between_stored_photos_and_without_local_features(client, ro_store, store_copy):
    with Store.open(ro_store) as st:
        a, b = st.keys("train")[:2]
    r = client.get(f"/images/{a}/matches/{b}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with sqlite3.connect(store_copy / "meta.sqlite") as db:  # a stored photo's file gone from the server
        db.execute("UPDATE images SET path = ? WHERE key = ?", (str(store_copy / "gone.jpg"), b))
    with TestClient(create_app(store_copy, ServiceSettings())) as moved:
        r = moved.get(f"/images/{a}/matches/{b}")
    assert r.status_code == 404 and "a stored photo cannot be read" in r.json()["error"]
    shutil.rmtree(store_copy / "local")  # a store built with local.enabled=false
    with TestClient(create_app(store_copy, ServiceSettings())) as bare:
        r = bare.get(f"/images/{a}/matches/{b}")
    assert r.status_code == 404 and "local features are not available" in r.json()["error"]


class _WithEvidence(Landmarks):
    """A Landmarks with the local-feature evidence hook: records its calls, answers a 1x1 PNG or None."""

    calls: list = []
    answer: bytes | None = None

    def match_evidence(self, a, b):
        type(self).calls.append((a if isinstance(a, str) else ("photo" if isinstance(a, Image.Image) else a), b))
        return type(self).answer


def test_matches_and_upload_evidence_go_through_match_evidence(store_copy, eiffel_query, monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    monkeypatch.setattr(_WithEvidence, "answer", buf.getvalue())
    monkeypatch.setattr(_WithEvidence, "calls", [])
    with TestClient(create_app(_WithEvidence.open(store_copy))) as c:
        with Store.open(store_copy) as st:
            a, b = st.keys("train")[:2]
        r = c.get(f"/images/{a}/matches/{b}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == buf.getvalue()
        rec = c.post("/recognize", files=_upload(eiffel_query)).json()
        best = rec["matches"][0]["id"]
        assert rec["evidence_available"] and rec["evidence_url"] == f"/uploads/{rec['token']}/matches/{best}"
        assert c.get(rec["evidence_url"]).content == buf.getvalue()
        assert _WithEvidence.calls == [(a, b), ("photo", best)]
        assert c.get(f"/uploads/not-a-token/matches/{best}").status_code == 404
        assert c.get(f"/images/{a}/matches/unknown-id").status_code == 404
        monkeypatch.setattr(_WithEvidence, "answer", None)  # a store without local features
        r = c.get(f"/images/{a}/matches/{b}")
        assert r.status_code == 404 and "local features are not available" in r.json()["error"]


# -- writes ----------------------------------------------------------------------------------------
def test_add_search_and_delete_a_photo(rw, eiffel_query):
    c, store = rw
    before = c.get("/health").json()
    r = c.post("/images", files=_upload(eiffel_query), data={"landmark_id": "47378", "name": "Eiffel_Tower"})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["landmark_id"] == 47378 and new["split"] == "user" and new["id"].startswith("u-")
    after = c.get("/health").json()
    assert after["images"] == before["images"] + 1 and after["generation"] == before["generation"] + 1
    new_gen = after["generation"]
    # the new generation was prepared on the writer thread before reads saw it (reads never wait for that work)
    snap = c.app.state.service.snapshot
    assert (
        snap.generation == new_gen
        and snap.lm.searching._expanded
        and snap.lm.recognising._recognizer._known[0][0] == new_gen
    )
    top = c.post("/search?k=3&expand=false", files=_upload(eiffel_query)).json()["matches"][0]
    # the same photo: global similarity 1, and (its local features stored, below) verified by many inliers
    assert top["id"] == new["id"] and top["score"] > 1.0 and top["inliers"] > 50
    # DBA + alpha-QE (the default) mix each photo with its neighbours: the copy is found, not always first
    expanded = c.post("/search?k=3", files=_upload(eiffel_query)).json()
    assert expanded["expanded"] and new["id"] in [m["id"] for m in expanded["matches"]]
    saved = list((store / "uploads").iterdir())
    assert [p.read_bytes() for p in saved] == [eiffel_query.read_bytes()]
    assert c.get(new["thumbnail"]).status_code == 200
    with Store.open(store) as st:  # committed on disk, not only in memory
        assert st.get([new["id"]])[new["id"]].landmark_id == 47378
        # with the object prior every stored photo keeps (the known non-landmarks read it)
        prior = st.extras([new["id"]], PROBE_NAME)
        assert prior.shape[1] > 0 and np.isfinite(prior).all()
    # and its local features, so it is spatially verified like the photos of `landmark index add`
    assert LocalStore.open(store / LOCAL_DIR).present([new["id"]]) == {new["id"]}

    d = c.delete(f"/images/{new['id']}")
    assert d.status_code == 200 and d.json()["removed"] == new["id"]
    assert c.get(f"/images/{new['id']}").status_code == 404
    ids = [m["id"] for m in c.post("/search?k=3", files=_upload(eiffel_query)).json()["matches"]]
    assert new["id"] not in ids
    assert not list((store / "uploads").iterdir())
    assert not LocalStore.open(store / LOCAL_DIR).present([new["id"]])  # its local features went too
    assert c.delete(f"/images/{new['id']}").status_code == 404
    assert c.get("/health").json()["images"] == before["images"]


def test_add_with_a_chosen_id_unlabelled_and_name_appears_in_landmarks(rw, stonehenge_query):
    c, _ = rw
    r = c.post(
        "/images",
        files=_upload(stonehenge_query),
        data={"id": "my-photo_1", "landmark_id": "777", "name": "Test Place"},
    )
    assert r.status_code == 201 and r.json()["id"] == "my-photo_1" and r.json()["name"] == "Test Place"
    listed = c.get("/landmarks").json()["landmarks"]
    assert any(lm_["landmark_id"] == 777 and lm_["name"] == "Test Place" for lm_ in listed)
    dup = c.post("/images", files=_upload(stonehenge_query), data={"id": "my-photo_1"})
    assert dup.status_code == 409 and "already in the store" in dup.json()["error"]
    un = c.post("/images", files=_upload(stonehenge_query))
    assert un.status_code == 201 and un.json()["landmark_id"] is None


def test_reads_keep_a_consistent_snapshot_during_writes(rw, eiffel_query, stonehenge_query):
    """A read that holds the old snapshot still answers (no half-written state) after a commit removes rows."""
    c, store = rw
    service = c.app.state.service
    old = service.snapshot
    victims = [m["id"] for m in c.post("/search?k=5", files=_upload(eiffel_query)).json()["matches"]]
    for v in victims:
        assert c.delete(f"/images/{v}").status_code == 200
    assert service.snapshot is not old and service.snapshot.generation == old.generation + len(victims)
    img = Image.open(eiffel_query).convert("RGB")
    still = [m.id for m in old.lm.search([img], k=5)[0].matches]  # the old generation, whole and readable
    assert still == victims
    now = [m.id for m in service.snapshot.lm.search([img], k=5)[0].matches]
    assert not set(now) & set(victims)

    errors, done = [], threading.Event()

    def reader():
        while not done.is_set():
            r = c.post("/search?k=3", files=_upload(stonehenge_query))
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            assert c.post("/images", files=_upload(eiffel_query), data={"id": f"w{i}"}).status_code == 201
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors
    assert c.get("/health").json()["images"] == len(Store.open(store))


# -- bad input -------------------------------------------------------------------------------------
def _truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 3]


def _big_pixels() -> bytes:  # 2,250,000 pixels, under 400 kB as a flat PNG
    buf = io.BytesIO()
    Image.new("RGB", (1500, 1500), (10, 120, 200)).save(buf, "PNG")
    assert len(buf.getvalue()) < 400_000
    return buf.getvalue()


BAD_UPLOADS = {
    "not an image": (lambda q: b"%PDF-1.4 this is not a photo" * 10, 415, "not an image"),
    "truncated": (_truncated, 422, "truncated"),
    "empty": (lambda q: b"", 400, "empty upload"),
    "over the byte limit": (lambda q: np.random.default_rng(0).bytes(500_000), 413, "over the upload limit"),
    "over the pixel limit": (lambda q: _big_pixels(), 413, "over the limit"),
}


@pytest.mark.parametrize("endpoint", ["/recognize", "/search", "/images"])
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_4xx_json_and_change_nothing(rw, eiffel_query, endpoint, case):
    c, store = rw
    make, status, words = BAD_UPLOADS[case]
    before = _state(store)
    r = c.post(endpoint, files={"photo": ("bad.jpg", make(eiffel_query), "image/jpeg")}, data={"landmark_id": "47378"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and words in r.json()["error"]
    assert _state(store) == before


@pytest.mark.parametrize("endpoint", ["/recognize", "/search", "/images"])
def test_missing_photo_and_empty_body(rw, endpoint):
    c, store = rw
    before = _state(store)
    r = c.post(endpoint)
    assert r.status_code == 422 and "missing the photo" in r.json()["error"]
    r = c.post(endpoint, data={"landmark_id": "1"})
    assert r.status_code == 422 and "missing the photo" in r.json()["error"]
    assert _state(store) == before


def test_body_over_the_limit_is_refused_before_parsing(rw):
    c, store = rw
    before = _state(store)
    r = c.post("/images", content=b"x" * 600_000, headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and "over the upload limit" in r.json()["error"]
    assert _state(store) == before


def test_bad_form_fields_on_add(rw, eiffel_query):
    c, store = rw
    before = _state(store)
    r = c.post("/images", files=_upload(eiffel_query), data={"landmark_id": "eiffel"})
    assert r.status_code == 422 and "landmark_id must be an integer" in r.json()["error"]
    r = c.post("/images", files=_upload(eiffel_query), data={"landmark_id": str(2**64)})  # beyond SQLite's integers
    assert r.status_code == 422 and "64-bit" in r.json()["error"]
    r = c.post("/images", files=_upload(eiffel_query), data={"name": "Tour Eiffel"})  # a name of no landmark
    assert r.status_code == 422 and "needs the landmark_id" in r.json()["error"]
    for bad in ("../x", "a/b", ".hidden", "x" * 200):
        r = c.post("/images", files=_upload(eiffel_query), data={"id": bad})
        assert r.status_code == 400 and "invalid id" in r.json()["error"], bad
    assert _state(store) == before


@pytest.mark.parametrize(
    "method,template",
    [
        ("GET", "/images/{}"),
        ("GET", "/images/{}/thumbnail"),
        ("GET", "/images/{}/photo"),
        ("DELETE", "/images/{}"),
        ("GET", "/images/{}/matches/{known}"),
        ("GET", "/images/{known}/matches/{}"),
    ],
)
def test_unknown_and_path_like_ids(rw, method, template):
    c, store = rw
    before = _state(store)
    with Store.open(store) as st:
        known = st.keys()[0]
    r = c.request(method, template.format("no-such-photo", known=known))
    assert r.status_code == 404 and "no-such-photo" in r.json()["error"]
    for bad in ("..%2Fx", "..%2F..%2Fetc%2Fpasswd", "%2E%2E", "a%2F..%2Fb", "%2Fetc%2Fpasswd", "a%5Cb"):
        r = c.request(method, template.format(bad, known=known))
        assert r.status_code == 400 and "invalid image id" in r.json()["error"], (bad, r.text)
    assert _state(store) == before


def test_unknown_endpoint_is_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]


def test_commits_by_another_process_are_picked_up(store_copy, eiffel_query):
    """`landmark index remove/add` beside a running server: reads move to the new generation on their own."""
    import time

    with TestClient(create_app(store_copy, ServiceSettings(reload_check_s=0.05))) as c:
        with Store.open(store_copy) as st:
            victim = st.keys("train")[0]
        assert c.get(f"/images/{victim}").status_code == 200
        with Store.open(store_copy) as other:  # another writer (its own connection and lock)
            other.remove([victim])
        deadline = time.monotonic() + 30
        while c.get(f"/images/{victim}").status_code != 404:
            assert time.monotonic() < deadline, "the server never saw the other writer's commit"
            time.sleep(0.1)
        h = c.get("/health").json()
        with Store.open(store_copy) as st:
            assert (h["images"], h["generation"]) == (len(st), st.generation)
        ids = [m["id"] for m in c.post("/search?k=50", files=_upload(eiffel_query)).json()["matches"]]
        assert victim not in ids
        # and the service's own writer continues from the other writer's generation
        assert c.post("/images", files=_upload(eiffel_query), data={"id": "after"}).status_code == 201
        assert c.get("/health").json()["generation"] == h["generation"] + 1


def test_a_calibration_by_another_process_is_picked_up(store_copy):
    """`landmark calibrate` beside a running server changes only the configuration, not the generation."""
    import dataclasses
    import time

    with TestClient(create_app(store_copy, ServiceSettings(reload_check_s=0.05))) as c:
        service = c.app.state.service
        before = service.snapshot.lm.config.expansion.threshold
        with Store.open(store_copy) as other:
            generation = other.generation
            other.update_config(
                dataclasses.replace(
                    other.config, expansion=dataclasses.replace(other.config.expansion, threshold=before + 0.123)
                )
            )
        deadline = time.monotonic() + 30
        while service.snapshot.lm.config.expansion.threshold != before + 0.123:
            assert time.monotonic() < deadline, "the server never saw the new configuration"
            time.sleep(0.1)
        assert service.snapshot.generation == generation


def test_an_unexpected_failure_is_a_json_500(store_copy, eiffel_query):
    class Broken(Landmarks):
        def recognize(self, photos, **kw):
            raise RuntimeError("boom")

    with TestClient(create_app(Broken.open(store_copy)), raise_server_exceptions=False) as c:
        r = c.post("/recognize", files=_upload(eiffel_query))
        assert r.status_code == 500 and "RuntimeError" in r.json()["error"]
        assert c.get("/health").status_code == 200  # the service keeps serving
        assert 'route="/recognize",status="500"' in c.get("/metrics").text
