"""GLDv2 download against a local HTTP server that mimics the bucket: layout, md5 check, resume, safety."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from landmark.data import read_gldv2, read_gldv2_solution
from landmark.data.download import DownloadError, category_name, download_gldv2, parse_parts

IDS = {0: ["00a1b2c3d4e5f601", "11b2c3d4e5f60102"], 1: ["22c3d4e5f6010203"]}  # train TAR -> photo ids
LABELS = {"00a1b2c3d4e5f601": 7, "11b2c3d4e5f60102": 7, "22c3d4e5f6010203": 9, "33d4e5f601020304": 9}


class _Bucket(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP range support; records the paths asked for."""

    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (seed * 40 % 255, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put(root: Path, rel: str, data: bytes | str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture()
def bucket(tmp_path):
    b = tmp_path / "bucket"
    _put(
        b,
        "metadata/train.csv",
        "id,url,landmark_id\n" + "".join(f"{i},http://x/{i},{lab}\n" for i, lab in LABELS.items()),
    )
    _put(
        b,
        "metadata/train_label_to_category.csv",
        "landmark_id,category\n7,http://commons.wikimedia.org/wiki/Category:Eiffel_Tower\n"
        "9,http://commons.wikimedia.org/wiki/Category:Sacr%C3%A9-C%C5%93ur\n",
    )
    for part, ids in IDS.items():
        tar = _tar({f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg": _jpeg(n) for n, i in enumerate(ids)})
        _put(b, f"train/images_{part:03d}.tar", tar)
        _put(b, f"md5sum/train/md5.images_{part:03d}.txt", f"{hashlib.md5(tar).hexdigest()}  images_{part:03d}.tar\n")
    _put(b, "metadata/test.csv", "id\nffeeddccbbaa0099\n")
    _put(b, "ground_truth/recognition_solution_v2.1.csv", "id,landmarks,Usage\nffeeddccbbaa0099,7,Public\n")
    _put(b, "ground_truth/retrieval_solution_v2.1.csv", "id,images,Usage\nffeeddccbbaa0099,None,Ignored\n")
    test_tar = _tar({"f/f/e/ffeeddccbbaa0099.jpg": _jpeg(5)})
    _put(b, "test/images_000.tar", test_tar)
    _put(b, "md5sum/test/md5.images_000.txt", f"{hashlib.md5(test_tar).hexdigest()}  images_000.tar\n")
    _Bucket.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Bucket, directory=str(b)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield b, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_downloads_verifies_and_lays_out_a_readable_dataset(bucket, tmp_path):
    _, url = bucket
    root = tmp_path / "gldv2"
    report = download_gldv2(root, ("train", "test"), parts="0-0", base_url=url, progress=False)
    assert report.downloaded == ["train/images_000.tar", "test/images_000.tar"]
    train = read_gldv2(root, "train", check_files=True)  # only the photos that arrived are listed
    assert train.ids() == IDS[0] and [r.landmark_id for r in train] == [7, 7]
    assert train.label_names == {7: "Eiffel_Tower", 9: "Sacré-Cœur"}
    assert Image.open(train[0].path).size == (40, 30)
    assert read_gldv2_solution(root).recognition == {"ffeeddccbbaa0099": 7}
    assert not list((root / ".download" / "train").glob("*.tar"))  # TARs removed after unpacking

    # a second run with more TARs fetches only the new one and lists the photos of both
    _Bucket.requests.clear()
    report = download_gldv2(root, ("train",), parts="0-1", base_url=url, progress=False)
    assert report.skipped == ["train/images_000.tar"] and report.downloaded == ["train/images_001.tar"]
    assert [p for p, _ in _Bucket.requests if p.endswith(".tar")] == ["/train/images_001.tar"]
    assert read_gldv2(root, "train", check_files=True).ids() == IDS[0] + IDS[1]


def test_a_partial_download_resumes_with_a_range_request(bucket, tmp_path):
    b, url = bucket
    root = tmp_path / "gldv2"
    full = (b / "train/images_000.tar").read_bytes()
    part = root / ".download/train/images_000.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:1000])  # what a killed run left behind
    download_gldv2(root, ("train",), parts="0", base_url=url, progress=False)
    assert ("/train/images_000.tar", "bytes=1000-") in _Bucket.requests
    assert read_gldv2(root, "train", check_files=True).ids() == IDS[0]


def test_a_corrupt_tar_is_rejected_and_nothing_is_marked_done(bucket, tmp_path):
    b, url = bucket
    _put(b, "train/images_001.tar", b"\x00" * 2048)
    root = tmp_path / "gldv2"
    with pytest.raises(DownloadError, match=r"images_001\.tar: md5 .* does not match"):
        download_gldv2(root, ("train",), parts="1", base_url=url, progress=False)
    assert not (root / ".download/done/train-images_001.tar.ids").exists()
    assert not (root / ".download/train/images_001.tar").exists()


def test_tar_members_cannot_escape_the_split_folder(bucket, tmp_path):
    b, url = bucket
    evil = _tar({"../../../../escaped.jpg": _jpeg(1), "0/0/a/00a1b2c3d4e5f601.jpg": _jpeg(2)})
    _put(b, "train/images_000.tar", evil)
    _put(b, "md5sum/train/md5.images_000.txt", hashlib.md5(evil).hexdigest() + "  images_000.tar\n")
    root = tmp_path / "data" / "gldv2"
    download_gldv2(root, ("train",), parts="0", base_url=url, progress=False)
    assert all(root / "train" in p.parents for p in tmp_path.rglob("escaped.jpg"))
    assert (root / "train/e/s/c/escaped.jpg").is_file()  # re-homed into the a/b/c layout


def test_unreachable_server_and_bad_ranges_give_clear_errors(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9/metadata/train.csv"):
        download_gldv2(tmp_path, ("train",), parts="0", base_url="http://127.0.0.1:9", timeout=5)
    assert parse_parts("0-2,7", "test") == [0, 1, 2, 7]
    assert parse_parts(None, "test") == list(range(20))
    with pytest.raises(Exception, match="outside 0-19"):
        parse_parts("18-20", "test")
    assert category_name("http://commons.wikimedia.org/wiki/Category:Tower_Bridge") == "Tower_Bridge"
