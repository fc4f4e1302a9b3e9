"""Per-photo extras (the object prior's group probabilities) kept in the store beside the vectors."""

import sqlite3

import numpy as np
import pytest

from landmark.config import load_config
from landmark.index import Store
from store_helpers import SIG, unit


def test_extras_round_trip_replace_and_remove(tmp_path):
    st = Store.create(tmp_path / "s", load_config(), SIG)
    probs = np.random.default_rng(1).dirichlet(np.ones(5), size=4).astype(np.float32)
    st.add(["a", "b", "c", "d"], unit(4), extras={"groups": probs})
    got = st.extras(["c", "a"], "groups")
    assert got.shape == (2, 5) and np.allclose(got, probs[[2, 0]], atol=1e-3)  # float16 on disk
    st.add(["e"], unit(1, seed=2))  # added without extras
    assert np.isnan(st.extras(["e", "a"], "groups")[0]).all() and np.isfinite(st.extras(["a"], "groups")).all()
    st.set_extras(["e"], "groups", probs[:1])
    assert np.allclose(st.extras(["e"], "groups"), probs[:1], atol=1e-3)
    assert np.isnan(st.extras(["a"], "other")).all() and st.extras(["a"], "other").shape == (1, 0)
    st.remove(["a"])
    rows = sqlite3.connect(tmp_path / "s" / "meta.sqlite").execute("SELECT count(*) FROM extras").fetchone()[0]
    assert rows == 4  # b, c, d, e
    with pytest.raises(KeyError):
        st.extras(["a"], "groups")
    # a reopened store sees the same values; meta values and config updates persist
    st.set_meta_value("calibration", {"t1": 0.5})
    cfg = load_config(overrides=["recognition.t1=0.5"])
    st.update_config(cfg)
    again = Store.open(tmp_path / "s")
    assert np.allclose(again.extras(["c"], "groups"), probs[2:3], atol=1e-3)
    assert again.meta_value("calibration") == {"t1": 0.5} and again.meta_value("missing") is None
    assert again.config.recognition.t1 == 0.5
    assert "t1: 0.5" in (tmp_path / "s" / "config.yaml").read_text()


def test_store_made_before_extras_existed_opens(tmp_path):
    st = Store.create(tmp_path / "s", load_config(), SIG)
    st.add(["a"], unit(1))
    st.close()
    conn = sqlite3.connect(tmp_path / "s" / "meta.sqlite")
    conn.execute("DROP TABLE extras")
    conn.commit()
    conn.close()
    again = Store.open(tmp_path / "s")
    assert np.isnan(again.extras(["a"], "groups")).all()
