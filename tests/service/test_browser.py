"""The real page in headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against
`landmark serve` started on a free local port: upload a photo, see the landmark and the thumbnails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import landmark

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(store_copy, tmp_path):
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(landmark.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "landmark.cli",
            "serve",
            "--store",
            str(store_copy),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"landmark serve did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "headless browser test needs Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_recognise_a_photo_from_the_page(server, browser, stonehenge_query, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: "photos" in d.find_element(By.ID, "store-info").text)
    browser.find_element(By.ID, "file").send_keys(str(stonehenge_query))  # the file picker of the drop zone
    wait.until(EC.visibility_of_element_located((By.ID, "result")))
    assert "Stonehenge" in browser.find_element(By.ID, "landmark-name").text
    assert "confidence" in browser.find_element(By.ID, "score").text
    wait.until(
        lambda d: any(
            img.get_property("naturalWidth") > 0 for img in d.find_elements(By.CSS_SELECTOR, "#matches .card img")
        )
    )
    cards = browser.find_elements(By.CSS_SELECTOR, "#matches .card")
    assert cards and "Stonehenge" in cards[0].text and "score" in cards[0].text
    # retrieval over every stored photo: Stonehenge photos, labelled or not, fill the similar photos
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar .card")) > 0)
    similar = browser.find_elements(By.CSS_SELECTOR, "#similar .card")
    assert "Stonehenge" in similar[0].text or "unlabelled" in similar[0].text
    assert sum("Stonehenge" in c.text for c in similar) >= 3
    # the store has local features: the verified keypoint matches with the best match are drawn
    wait.until(lambda d: d.find_element(By.ID, "evidence").get_property("naturalWidth") > 0)
    assert "keypoints" in browser.find_element(By.ID, "evidence-note").text
    shot = tmp_path / "recognize.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("LANDMARK_SCREENSHOT_DIR"):
        out = Path(os.environ["LANDMARK_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / "test_browser_recognize.png")


def test_a_filtered_non_landmark_is_not_named_nor_offered_to_a_landmark(server, browser, gldv2_root):
    import csv

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    test = {r["id"] for r in csv.DictReader(open(gldv2_root / "test.csv"))}
    desk = next(
        r["id"]
        for r in sorted(csv.DictReader(open(gldv2_root / "sources.csv")), key=lambda r: r["source"])
        if r["id"] in test and "freiburg" in r["source"].lower()
    )  # a frame of a desk sequence
    photo = gldv2_root / "test" / desk[0] / desk[1] / desk[2] / f"{desk}.jpg"
    browser.get(server + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: "photos" in d.find_element(By.ID, "store-info").text)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(EC.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "grade").text.lower() == "non-landmark"
    assert browser.find_element(By.ID, "landmark-name").text == "Not recognised as a landmark"
    assert "nearest landmark" in browser.find_element(By.ID, "landmark-id").text
    assert not browser.find_element(By.ID, "add-this").is_displayed()
