import numpy as np
import pytest

from landmark.features.whitening import Whitening, WhiteningError, l2n, learn_whitening


def _data(n=400, d=32, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.concatenate([[10.0, 8.0, 6.0, 4.0], np.linspace(1.0, 0.1, d - 4)])
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * scales) @ basis.T + 3.0, basis


def test_full_whitening_gives_identity_covariance():
    x, _ = _data()
    w = learn_whitening(x, dim=8, power=1.0)
    y = (x - w.mean) @ w.projection.T           # before re-normalisation
    cov = y.T @ y / len(x)
    assert np.allclose(cov, np.eye(8), atol=1e-6)


def test_pca_keeps_leading_directions_and_variances():
    x, basis = _data()
    w = learn_whitening(x, dim=4, power=0.0)
    # the kept directions span the 4 directions of largest variance of the generator
    overlap = w.projection @ basis[:, :4]
    assert np.allclose(np.linalg.svd(overlap, compute_uv=False), 1.0, atol=0.05)
    assert np.all(np.diff(w.eigenvalues) <= 0)
    y = (x - w.mean) @ w.projection.T
    assert np.allclose(y.var(axis=0), w.eigenvalues, rtol=1e-6)


def test_power_and_shrinkage_interpolate():
    x, _ = _data()
    half = learn_whitening(x, dim=6, power=0.5)
    y = (x - half.mean) @ half.projection.T
    assert np.allclose(y.var(axis=0), np.sqrt(half.eigenvalues), rtol=1e-6)
    shrunk = learn_whitening(x, dim=6, power=1.0, shrinkage=1.0)
    var = ((x - shrunk.mean) @ shrunk.projection.T).var(axis=0)
    lam = shrunk.eigenvalues
    assert np.allclose(var, lam / (lam + lam.mean()), rtol=1e-6)


def test_apply_normalises_and_checks_shape():
    x, _ = _data()
    w = learn_whitening(x, dim=5)
    out = w.apply(x[:7])
    assert out.shape == (7, 5) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(WhiteningError, match="expects N x 32"):
        w.apply(np.ones((2, 31)))


def test_save_load_roundtrip_without_pickle(tmp_path):
    x, _ = _data()
    w = learn_whitening(x, dim=5, power=0.7, shrinkage=0.1)
    w.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    back = Whitening.load(tmp_path / "w.npz")
    assert back.digest == w.digest and back.power == 0.7
    assert np.allclose(back.apply(x[:3]), w.apply(x[:3]))
    other = learn_whitening(x[:200], dim=5, power=0.7, shrinkage=0.1)
    assert other.digest != w.digest
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(WhiteningError, match="bad.npz"):
        Whitening.load(tmp_path / "bad.npz")


def test_rank_limit_and_bad_input():
    x, _ = _data(n=10)
    with pytest.raises(WhiteningError, match="at most 9"):
        learn_whitening(x, dim=10)
    assert learn_whitening(x, dim=None).out_dim == 9
    with pytest.raises(WhiteningError):
        learn_whitening(np.full((5, 3), np.nan), dim=2)


def test_whitening_helps_retrieval_with_a_dominant_nuisance_direction():
    # same-class pairs differ by a large shared nuisance component; whitening down-weights it
    rng = np.random.default_rng(1)
    d, classes = 64, 50
    centres = rng.normal(size=(classes, d))
    nuisance = rng.normal(size=(1, d)) * 8
    def sample():
        return centres + rng.normal(size=(classes, 1)) * nuisance + rng.normal(size=(classes, d)) * 0.3
    db, q = l2n(sample()), l2n(sample())
    unlabelled = l2n(np.concatenate([sample() for _ in range(5)]))
    w = learn_whitening(unlabelled, dim=32, power=1.0)
    plain = (q @ db.T).argmax(1) == np.arange(classes)
    white = (w.apply(q) @ w.apply(db).T).argmax(1) == np.arange(classes)
    assert white.mean() > plain.mean() + 0.2
