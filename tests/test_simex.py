"""SimEx fleet: batched delta against its one-by-one float64 definition, planted similarity on
scikit-learn digits, record round trip through the hub codec, seeding, class similarity and
pairing, and the errors a user can cause."""
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from fitsketch import errors as E
from fitsketch import simex as S
from fitsketch.storage import pack, unpack

# delta (float64 mean of float32 per-sample losses) vs delta_reference (float64 throughout)
TOLERANCE = {
    "mse": (np.float64, 1e-5, 1e-4),   # dtype, atol, rtol
    "ssim": (np.float64, 1e-5, 1e-4),
}
TINY = S.AEConfig(hidden=(12, 4, 12), channels=(3, 5), epochs=2, min_epochs=1, batch_size=16)


def _close(got, ref, loss):
    dtype, atol, rtol = TOLERANCE[loss]
    assert got.dtype == dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(X))
    return X[perm].astype(np.float32), y[perm]


def _fleet(rng, kind, image_shape, d, n_ae, same_scale=False, config=TINY):
    """Freshly trained (2 epochs) autoencoders on random data of different locations and spreads."""
    recs = []
    for e in range(n_ae):
        x = rng.random((24, d)).astype(np.float32) * (1.0 + e) + (0.0 if image_shape else e)
        if same_scale:
            x[0, 0] = 3.0  # every image AE divides by the same max
        recs.append(S.train_autoencoder(x, image_shape=image_shape, config=S.dataclasses.replace(config, kind=kind)))
    return recs


# ----------------------------------------------------------------------------- batched == reference
_ARCHS = [
    ("mlp", None, False),          # per-AE standardization, own batched matmul path
    ("mlp", (2, 9, 7), True),      # one shared input transform: kernels.recon_error path
    ("mlp", (2, 9, 7), False),     # image MLPs with different scales
    ("conv", (2, 9, 7), False),    # grouped convolutions
]
# the float64 conv reference is slow: one conv case at n=97
_CASES = [(n, *a, norm) for n in (1, 7, 97) for a in _ARCHS for norm in (True, False)
          if not (a[0] == "conv" and n == 97 and not norm)]


@pytest.mark.parametrize("n,kind,image_shape,same_scale,normalize", _CASES)
def test_delta_equals_reference(rng, n, kind, image_shape, same_scale, normalize):
    d = 126 if image_shape else 13
    recs = _fleet(rng, kind, image_shape, d, 3, same_scale)
    x = (rng.random((n, d)) * 2.5).astype(np.float32)
    _close(S.delta(x, recs, normalize=normalize, device="cpu"),
           S.delta_reference(x, recs, normalize=normalize), "mse")


@pytest.mark.parametrize("kind,same_scale", [("mlp", True), ("mlp", False), ("conv", False)])
def test_delta_ssim_equals_reference(rng, kind, same_scale):
    recs = _fleet(rng, kind, (2, 9, 7), 126, 2, same_scale)
    x = (rng.random((7, 126)) * 2.5).astype(np.float32)
    _close(S.delta(x, recs, loss="ssim", device="cpu"), S.delta_reference(x, recs, loss="ssim"), "ssim")


def test_delta_mixed_architectures_keep_order(rng):
    """Records of several architectures in one call: grouped per architecture, results in input order."""
    a = _fleet(rng, "mlp", None, 10, 2)
    b = _fleet(rng, "mlp", None, 10, 2, config=S.dataclasses.replace(TINY, hidden=(6, 3, 6)))
    recs = [a[0], b[0], a[1], b[1]]
    x = rng.random((5, 10)).astype(np.float32)
    _close(S.delta(x, recs, device="cpu"), S.delta_reference(x, recs), "mse")
    single = np.array([S.delta(x, [r], device="cpu")[0] for r in recs])
    _close(S.delta(x, recs, device="cpu"), single, "mse")


# ----------------------------------------------------------------------------- planted similarity
@pytest.mark.parametrize("kind,image_shape", [("mlp", None), ("mlp", (1, 8, 8)), ("conv", (1, 8, 8))])
def test_planted_digits_rank_own_classes_first(digits, kind, image_shape):
    """AEs on {0,1,2}, {5,6,7} and all classes (an equal-size sample, so the test is about fit, not
    data quantity), trained for one fixed budget; a held-out {5,6,7} target is closest to the
    {5,6,7} AE. With rank-stable early stopping the AEs stop at different stages, which can let a
    longer-trained broad AE win (see the module docstring); the clearly different {0,1,2} AE must
    still lose."""
    X, y = digits
    tr, te = np.arange(1200), np.arange(1200, len(X))
    low, high = X[tr][np.isin(y[tr], [0, 1, 2])], X[tr][np.isin(y[tr], [5, 6, 7])]
    everything = X[tr][: len(high)]
    target = X[te][np.isin(y[te], [5, 6, 7])]
    fixed = S.AEConfig(kind=kind, epochs=25, patience=25)
    recs = [S.train_autoencoder(z, image_shape=image_shape, config=fixed) for z in (low, high, everything)]
    for kw in ([dict(calibrated=True)] + [dict(normalize=nz) for nz in (True, False)] * bool(image_shape)):
        # raw losses of tabular (per-feature standardized) autoencoders favour the broad source;
        # the calibrated score (the hub's default) does not
        d = S.delta(target, recs, **kw)
        assert int(np.argmin(d)) == 1, (kw, d)
        assert S.entry_score(d[1:2]) > S.entry_score(d[0:1])
    early = S.AEConfig(kind=kind, epochs=25)
    recs = [S.train_autoencoder(z, image_shape=image_shape, config=early) for z in (low, high)]
    assert all(r.stopped in ("rank-stable", "epoch-cap") for r in recs)
    for kw in (dict(), dict(calibrated=True)):
        d = S.delta(target, recs, **kw)
        assert d[1] < d[0], (kw, d)


# ----------------------------------------------------------------------------- records
def test_record_roundtrip_through_codec(rng):
    recs = _fleet(rng, "conv", (1, 8, 8), 64, 2) + _fleet(rng, "mlp", None, 9, 1)
    recs[0].label, recs[1].label, recs[2].features = 3, "cat", [f"c{i}" for i in range(9)]
    back = [S.AERecord.from_record(unpack(pack(r.to_record()))) for r in recs]
    for r, b in zip(recs, back):
        assert b.weights.keys() == r.weights.keys()
        for k in r.weights:
            assert b.weights[k].dtype == np.float32 and b.weights[k].tobytes() == r.weights[k].tobytes()
        assert b.shift.tobytes() == r.shift.tobytes() and b.scale.tobytes() == r.scale.tobytes()
        assert (b.label, b.features, b.norm, b.image_shape) == (r.label, r.features, r.norm, r.image_shape)
    x = rng.random((11, 64)).astype(np.float32)
    np.testing.assert_array_equal(S.delta(x, back[:2]), S.delta(x, recs[:2]))
    np.testing.assert_array_equal(S.delta(x[:, :9], back[2:]), S.delta(x[:, :9], recs[2:]))
    # records (dicts) are accepted directly, as the hub will hand them over
    np.testing.assert_array_equal(S.delta(x, [r.to_record() for r in recs[:2]]), S.delta(x, recs[:2]))


def test_record_unknown_version_and_corrupt(rng):
    rec = _fleet(rng, "mlp", None, 5, 1)[0].to_record()
    with pytest.raises(E.SchemaError, match="format 99.*upgrade fitsketch"):
        S.AERecord.from_record({**rec, "v": 99})
    with pytest.raises(E.CorruptHubError):
        S.AERecord.from_record({k: v for k, v in rec.items() if k != "weights"})
    with pytest.raises(E.CorruptHubError, match="do not match"):
        S.AERecord.from_record({**rec, "weights": {**rec["weights"], "W0": np.zeros((2, 2), np.float32)}})


def test_training_is_seeded(digits):
    X = digits[0][:120]
    for kind, shape in (("mlp", None), ("conv", (1, 8, 8))):
        cfg = S.AEConfig(kind=kind, epochs=3, seed=7)
        a, b = (S.train_autoencoder(X, image_shape=shape, config=cfg) for _ in range(2))
        assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
        c = S.train_autoencoder(X, image_shape=shape, config=S.dataclasses.replace(cfg, seed=8))
        assert not all(np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_fleet_per_class_labels(digits):
    X, y = digits
    labels = np.array(["odd", "even"])[(y[:200] % 2 == 0).astype(int)]
    fleet = S.train_fleet(X[:200], labels, config=TINY)
    assert [r.label for r in fleet] == ["even", "odd"]
    assert [r.n_samples for r in fleet] == [int((labels == "even").sum()), int((labels == "odd").sum())]
    assert [r.label for r in S.train_fleet(X[:50], config=TINY)] == [None]


# ----------------------------------------------------------------------------- classes
def test_class_similarity_own_class_closest(digits, tmp_path):
    X, y = digits
    classes, m = S.class_similarity(X[:600], y[:600], image_shape=(1, 8, 8),
                                    config=S.AEConfig(kind="mlp", epochs=20))
    assert classes == list(range(10)) and m.shape == (10, 10)
    own_rank = [int((m[i] < m[i, i]).sum()) for i in range(10)]
    assert max(own_rank) <= 1 and sum(r == 0 for r in own_rank) >= 9, m
    sym = S.class_similarity(X[:300], y[:300], symmetric=True, fleet=S.train_fleet(
        X[:300], y[:300], image_shape=(1, 8, 8), config=TINY))[1]
    np.testing.assert_array_equal(sym, sym.T)
    path = S.heatmap(classes, m, tmp_path / "classes.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_pair_classes_two_halves_of_digits(digits):
    X, y = digits
    half = len(X) // 2
    pairs = S.pair_classes(X[:half], y[:half], X[half:], y[half:], config=S.AEConfig(kind="mlp", epochs=15))
    assert len(pairs) == 10 and len({t for t, _, _ in pairs}) == 10 and len({s for _, s, _ in pairs}) == 10
    assert sum(t == s for t, s, _ in pairs) >= 8, pairs
    assert [p[2] for p in pairs] == sorted(p[2] for p in pairs)


def test_greedy_pairs_takes_global_minimum_first():
    m = np.array([[0.5, 0.1, 0.9], [0.2, 0.05, 0.7]])
    assert S.greedy_pairs(["a", "b"], ["x", "y", "z"], m) == [("b", "y", 0.05), ("a", "x", 0.5)]


# ----------------------------------------------------------------------------- inputs and errors
def test_numeric_matrix_and_entry_score():
    df = pd.DataFrame({"a": [1, 2, 3], "s": ["x", "y", "z"], "b": [0.5, 1.5, 2.5]})
    x = S.numeric_matrix(df)
    assert x.dtype == np.float32 and x.shape == (3, 2)
    np.testing.assert_array_equal(S.numeric_matrix(df, columns=["b", "a"])[:, 0], [0.5, 1.5, 2.5])
    with pytest.raises(E.DimensionError, match="lacks columns"):
        S.numeric_matrix(df, columns=["a", "zz"])
    with pytest.raises(E.UnsupportedDataError, match="no numeric column"):
        S.numeric_matrix(df[["s"]])
    with pytest.raises(E.NonFiniteError):
        S.numeric_matrix(pd.DataFrame({"a": [1.0, np.nan]}))
    assert S.entry_score([0.3, 0.1, 0.2]) == -0.1
    with pytest.raises(E.InvalidArgumentError):
        S.entry_score([])


def test_errors_teach(rng):
    x = rng.random((20, 12)).astype(np.float32)
    with pytest.raises(E.DimensionError, match=r"holds 16 values but rows have 12"):
        S.train_fleet(x, image_shape=(1, 4, 4), config=TINY)
    with pytest.raises(S.TooFewSamplesError, match=r"fewer than 8 samples") as ei:
        S.train_fleet(x, np.r_[np.zeros(15), np.ones(5)], config=TINY)
    assert isinstance(ei.value, E.InvalidArgumentError) and ei.value.code == "too_few_samples"
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(E.NonFiniteError, match="row 3, column 4"):
        S.train_autoencoder(bad, config=TINY)
    rec = S.train_autoencoder(x, config=TINY)
    with pytest.raises(E.NonFiniteError):
        S.delta(np.where(x > 0.5, np.inf, x), [rec])
    with pytest.raises(S.UnknownLossError, match="use one of mse, ssim"):
        S.delta(x, [rec], loss="mae")
    with pytest.raises(S.UnknownLossError, match="needs image autoencoders"):
        S.delta(x, [rec], loss="ssim")
    with pytest.raises(E.DimensionError, match="take \\[12\\]"):
        S.delta(x[:, :5], [rec])
    with pytest.raises(E.EmptyDataError):
        S.delta(x[:0], [rec])
    with pytest.raises(E.InvalidArgumentError, match="needs image_shape"):
        S.train_autoencoder(x, config=S.AEConfig(kind="conv"))
    with pytest.raises(E.InvalidArgumentError, match="epochs"):
        S.AEConfig(epochs=0)
    assert E.BY_CODE["too_few_samples"] is S.TooFewSamplesError


def test_cuda_without_gpu_raises(rng):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    x = rng.random((20, 6)).astype(np.float32)
    with pytest.raises(E.DeviceError):
        S.delta(x, [S.train_autoencoder(x, config=TINY)], device="cuda")
