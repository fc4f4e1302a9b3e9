"""``make demo`` (``landmark evaluate``) without a dataset: one paragraph on the three ways to get data,
exit status 2, no traceback (issue #29)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WAYS = ("LANDMARK_DATA=", "make demo", "landmark download", "--parts 0-0", "own photos", "landmark index build")


def test_evaluate_without_data_names_the_three_ways_in_one_paragraph(cli, tmp_path):
    result = cli("evaluate", tmp_path / "missing")
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph
    assert f"no dataset at {tmp_path / 'missing'}" in result.stderr and all(w in result.stderr for w in WAYS)
    (tmp_path / "photos").mkdir()  # a folder, but not the GLDv2 layout evaluate scores
    result = cli("evaluate", tmp_path / "photos")
    assert result.exit_code == 2 and "not a Google Landmarks v2" in result.stderr
    assert all(w in result.stderr for w in WAYS) and not (tmp_path / "photos" / "store").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_without_data_exits_2_without_a_traceback(tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "landmark").exists():
        pytest.skip(f"no landmark script beside {sys.executable}")
    stamp = tmp_path / "installed"  # stands for the venv's install stamp; -o: never remade (nothing installed)
    stamp.touch()
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    }
    env.pop("LANDMARK_DATA", None)
    result = subprocess.run(
        [
            "make",
            "-o",
            str(stamp),
            "demo",
            f"STAMP={stamp}",
            f"BIN={bin_dir}",
            f"DATA={tmp_path / 'none'}",
            f"OUT={tmp_path / 'out'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(w in result.stderr for w in WAYS) and not (tmp_path / "out").exists()
