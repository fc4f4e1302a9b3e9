import numpy as np
import pytest

from landmark.features.whitening import Whitening, WhiteningError, l2n, learn_labelled_whitening, learn_whitening


def _data(n=400, d=32, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.concatenate([[10.0, 8.0, 6.0, 4.0], np.linspace(1.0, 0.1, d - 4)])
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * scales) @ basis.T + 3.0, basis


def test_full_whitening_gives_identity_covariance():
    x, _ = _data()
    w = learn_whitening(x, dim=8, power=1.0)
    y = (x - w.mean) @ w.projection.T  # before re-normalisation
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


def _landmarks(n_per=60, classes=6, d=16, seed=0):
    """Photos of ``classes`` landmarks whose means differ along small directions, while a large
    nuisance (light, viewpoint) varies inside every landmark along a few others."""
    rng = np.random.default_rng(seed)
    means = np.zeros((classes, d))
    means[:, :4] = rng.normal(scale=1.0, size=(classes, 4))
    nuisance = np.concatenate([np.full(4, 0.3), np.full(3, 6.0), np.full(d - 7, 0.3)])
    labels = np.repeat(np.arange(classes), n_per)
    x = means[labels] + rng.normal(size=(len(labels), d)) * nuisance
    return x, labels


def test_learned_whitening_whitens_the_within_landmark_covariance():
    x, labels = _landmarks()
    w = learn_labelled_whitening(x, labels, dim=None, shrinkage=0.0)
    assert w.kind == "learned" and w.out_dim == x.shape[1]
    y = (x - w.mean) @ w.projection.T  # before re-normalisation
    means = np.stack([y[labels == c].mean(0) for c in range(6)])
    within = y - means[labels]
    # pair-weighted (every class has n photos, so it is the plain within-class covariance)
    assert np.allclose(within.T @ within / len(y), np.eye(x.shape[1]), atol=1e-6)
    # the kept components come in the order of their variance after that whitening
    assert np.all(np.diff(w.eigenvalues) <= 1e-12)
    assert np.allclose(y.var(axis=0), w.eigenvalues, rtol=1e-6)


def test_learned_whitening_finds_the_landmarks_a_nuisance_hides():
    x_all, l_all = _landmarks(n_per=80, seed=3)
    train, train_labels, queries, q_labels = x_all[::2], l_all[::2], x_all[1::2], l_all[1::2]

    def nn_accuracy(transform):
        q, db = transform(queries), transform(train)
        return float(np.mean(train_labels[np.argmax(q @ db.T, axis=1)] == q_labels))

    learned = learn_labelled_whitening(train, train_labels, dim=4, shrinkage=0.0)
    pca = learn_whitening(train, dim=4, power=1.0)
    assert nn_accuracy(l2n) < 0.6 and nn_accuracy(pca.apply) < 0.6
    assert nn_accuracy(learned.apply) > 0.85


def test_learned_whitening_needs_landmarks_and_shrinkage_when_singular():
    x, labels = _landmarks(n_per=2, classes=3)  # 6 photos, 16 dimensions
    with pytest.raises(WhiteningError, match="singular.*shrinkage"):
        learn_labelled_whitening(x, labels, dim=4, shrinkage=0.0)
    assert learn_labelled_whitening(x, labels, dim=4, shrinkage=0.1).out_dim == 4
    # beyond the rank of the centred photos, components would be arbitrary
    with pytest.raises(WhiteningError, match="span at most 5"):
        learn_labelled_whitening(x, labels, dim=6, shrinkage=0.1)
    assert learn_labelled_whitening(x, labels, dim=None, shrinkage=0.1).out_dim == 5
    with pytest.raises(WhiteningError, match="at least 2 landmarks"):
        learn_labelled_whitening(x, np.array([0, 0, 1, 2, 3, 4]), dim=4, shrinkage=0.1)
    # unlabelled rows (-1) are ignored, not taken for one more landmark
    with pytest.raises(WhiteningError, match="at least 2 landmarks"):
        learn_labelled_whitening(x, np.array([0, 0, -1, -1, 3, 4]), dim=4, shrinkage=0.1)
    with pytest.raises(WhiteningError, match="one label per vector"):
        learn_labelled_whitening(x, labels[:5], dim=4, shrinkage=0.1)


def test_learned_whitening_file_keeps_its_kind_and_held_out_photos(tmp_path):
    x, labels = _landmarks()
    w = learn_labelled_whitening(x, labels, dim=5, shrinkage=0.1, held_out=("b", "a"))
    w.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    back = Whitening.load(tmp_path / "w.npz")
    assert back.kind == "learned" and back.held_out == ("b", "a") and back.digest == w.digest
    assert back.signature["kind"] == "learned"
    # the same arrays as a PCA whitening are another whitening (its digest differs)
    assert Whitening(w.mean, w.projection, w.eigenvalues, w.power, w.shrinkage).digest != w.digest
    # a PCA whitening keeps the digest and signature stores were built with (computed by the code before
    # learned whitening existed), so they keep opening
    fixed = Whitening(np.arange(3.0), np.arange(6.0).reshape(2, 3) / 10, np.array([2.0, 1.0]), 0.5, 0.1)
    assert fixed.digest == "3721d262a622b033"
    assert fixed.signature == {"digest": "3721d262a622b033", "in_dim": 3, "dim": 2, "power": 0.5, "shrinkage": 0.1}
    # files written before learned whitening existed load as PCA, with the digest they had
    pca = learn_whitening(x, dim=5)
    np.savez(
        tmp_path / "old.npz",
        mean=pca.mean,
        projection=pca.projection,
        eigenvalues=pca.eigenvalues,
        power=np.float64(pca.power),
        shrinkage=np.float64(pca.shrinkage),
    )
    old = Whitening.load(tmp_path / "old.npz")
    assert old.kind == "pca" and old.held_out == () and old.digest == pca.digest and "kind" not in old.signature


def test_learned_whitening_weighs_landmarks_as_all_their_pairs():
    # unequal landmarks: the whitened covariance is that of every same-landmark pair difference
    rng = np.random.default_rng(4)
    sizes = (2, 3, 7, 15, 40)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    d = 6
    per_class = [rng.normal(size=(d, d)) for _ in sizes]  # each landmark varies its own way
    x = np.concatenate([rng.normal(size=(n, d)) @ a + 3 * c for c, (n, a) in enumerate(zip(sizes, per_class))])
    w = learn_labelled_whitening(x, labels, dim=None, shrinkage=0.0)
    diffs = np.concatenate(
        [
            (x[i] - x[j])[None]
            for c in range(len(sizes))
            for i in np.flatnonzero(labels == c)
            for j in np.flatnonzero(labels == c)
            if i < j
        ]
    )
    pairs = w.projection @ (diffs.T @ diffs) @ w.projection.T
    assert np.allclose(pairs / pairs[0, 0], np.eye(d), atol=1e-8)
