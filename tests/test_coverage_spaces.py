"""Coverage over sample embeddings and SimEx latents (engine/coverage_spaces.py): codes and counts
against plain-loop references, merge law, the batched encoders against the one-sample definition,
the union score against a loop, planted cases, fallback and errors, and the option through the
CLI and the server."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import coverage_spaces as S
from fitsketch import errors as E
from fitsketch import simex
from fitsketch.config import SketchConfig
from fitsketch.exact import normalize
from fitsketch.kernels import rowcodes as rc
from fitsketch.storage import u64

SIZES = [0, 1, 7, 97, 1001]
FAST_AE = simex.AEConfig(epochs=4, min_epochs=1, time_cap_s=0.0, seed=0)


def dense(rec) -> dict:
    return {(int(t), int(c)): int(n) for t, c, n in zip(rec["table"], rec["code"], rec["count"])}


def ref_dense(codes) -> dict:
    out = {}
    for t in range(codes.shape[0]):
        for c in codes[t].tolist():
            out[(t, c)] = out.get((t, c), 0) + 1
    return out


def off_edge(x, planes, margin=1e-4):
    """Rows whose every projection is clear of zero: the only rows where fp32 paths may disagree."""
    proj = np.einsum("nd,tbd->tnb", np.asarray(x, np.float64), planes.astype(np.float64))
    return ~(np.abs(proj) < margin).any(axis=(0, 2))


# ------------------------------------------------------------------------------- embedding counts
@pytest.mark.parametrize("n", SIZES)
def test_embedding_counts_equal_reference(n):
    rng = np.random.default_rng(n)
    d, T, B, seed = int(rng.integers(1, 40)) | 1, int(rng.integers(1, 5)), int(rng.integers(1, 13)), int(rng.integers(0, 2**31))
    planes = rc.hyperplanes(seed, T, B, S.space_keys("embedding", d))
    x = rng.standard_normal((n + 20, d)).astype(np.float32) * rng.uniform(0.1, 10, size=(n + 20, 1)).astype(np.float32)
    xn, _ = normalize(x)
    x = x[off_edge(xn, planes)][:n]
    assert x.shape[0] == n
    rec = S.embedding_record(x, seed=seed, bits=B, tables=T, device="cpu")
    assert rec["v"] == S.SPACE_FORMAT and rec["space"] == "embedding" and not rec["center"].any()
    assert dense(rec) == ref_dense(rc.row_codes_reference(normalize(x)[0], planes))
    assert int(rec["count"].sum()) == n * T


def test_embedding_counts_merge_by_addition():
    rng = np.random.default_rng(11)
    d, seed = 33, 5
    planes = rc.hyperplanes(seed, 8, 12, S.space_keys("embedding", d))
    x = rng.standard_normal((300, d)).astype(np.float32)
    x = x[off_edge(normalize(x)[0], planes)]
    a, b = x[:97], x[97:]
    kw = dict(seed=seed, bits=12, tables=8, device="cpu")
    merged = fitsketch.coverage.merge(S.embedding_record(a, **kw), S.embedding_record(b, **kw))
    assert dense(merged) == dense(S.embedding_record(x, **kw))


def test_embedding_score_is_the_rows_formula():
    rng = np.random.default_rng(3)
    src, q = rng.standard_normal((200, 9)), rng.standard_normal((57, 9))
    kw = dict(seed=1, bits=4, tables=3)
    rec = S.embedding_record(src, device="cpu", **kw)
    (got,) = S.embedding_coverage(q, [rec], tau=2.0, seed=1, device="cpu")
    planes = rc.hyperplanes(1, 3, 4, S.space_keys("embedding", 9))
    t_codes = rc.row_codes_reference(normalize(q)[0], planes)
    s_codes = rc.row_codes_reference(normalize(src)[0], planes)
    ref = [sum((t_codes[t] == c).mean() * min(1.0, (s_codes[t] == c).sum() / 2.0) for c in set(t_codes[t].tolist()))
           for t in range(3)]
    edge = ~off_edge(normalize(np.concatenate([src, q]))[0], planes)
    assert not edge.any()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    with pytest.raises(E.DimensionError, match="dimension"):
        S.embedding_coverage(q[:, :5], [rec], tau=1.0, seed=1)


# ------------------------------------------------------------------------------- latents
def random_record(kind: str, d: int, rng, image_shape=(), label=None) -> simex.AERecord:
    cfg = simex.AEConfig(hidden=(12, 5, 12), channels=(3, 4))
    shapes = simex._weight_shapes(kind, d, image_shape, cfg)
    w = {k: rng.standard_normal(s).astype(np.float32) * 0.5 for k, s in shapes.items()}
    return simex.AERecord(kind, d, image_shape, cfg.to_dict(), rng.normal(size=d).astype(np.float32),
                          rng.uniform(0.5, 2, size=d).astype(np.float32), 1.0, w, 10, 1, "epoch-cap", label,
                          [f"f{i}" for i in range(d)])


@pytest.mark.parametrize("n", [1, 7, 97])
def test_batched_encoders_equal_the_definition(n):
    """MLP (bottleneck pre-activation) and conv (second pooled map) fleets, stacked in one pass."""
    rng = np.random.default_rng(n)
    mlp = [random_record("mlp", 20, rng) for _ in range(3)]
    conv = [random_record("conv", 20, rng, image_shape=(1, 4, 5)) for _ in range(2)]
    recs = [mlp[0], conv[0], mlp[1], conv[1], mlp[2]]
    X = rng.normal(size=(n, 20)).astype(np.float32)
    got = S.encode_latent(X, recs, device="cpu")
    for r, z in zip(recs, got):
        ref = S.latent_reference(X, r)
        assert z.shape == ref.shape == (n, 5 if r.kind == "mlp" else 4 * 1 * 1)
        np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)


def test_latent_record_counts_equal_reference_codes():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(97, 6)).astype(np.float32)
    labels = np.repeat([2, 0, 1], [40, 1, 56])
    recs = [random_record("mlp", 6, rng, label=c) for c in (0, 1, 2)]
    lat = S.latent_record(X, labels, recs, seed=9, bits=7, tables=3, device="cpu")
    assert lat["v"] == S.SPACE_FORMAT and [a["n"] for a in lat["aes"]] == [1, 56, 40]
    for r, a, c in zip(recs, lat["aes"], (0, 1, 2)):
        (z,) = S.encode_latent(X[labels == c], [r], device="cpu")
        np.testing.assert_allclose(a["mean"], z.astype(np.float64).mean(axis=0), rtol=1e-12)
        zw = S._whiten(z, a)                                                   # (n_e, m + 1)
        assert np.all(zw[:, -1] == np.sqrt(zw.shape[1] - 1))                   # the offset coordinate
        if len(z) > 40:  # whitened training latents: mean 0, covariance ~ identity (up to the ridge)
            np.testing.assert_allclose(zw[:, :-1].T @ zw[:, :-1] / len(z), np.eye(zw.shape[1] - 1), atol=1e-2)
        codes = S.latent_codes(z, a, seed=9, device="cpu")
        assert dense(a) == ref_dense(codes)
        planes = rc.hyperplanes(9, 3, 7, S.space_keys("latent", zw.shape[1]))
        ok = off_edge(zw, planes)
        assert np.array_equal(codes[:, ok], rc.row_codes_reference(zw.astype(np.float32), planes)[:, ok])
    mean, w = S._whitening(rng.normal(size=(30, 40)))                          # fewer rows than dimensions
    assert w.shape == (40, S.WHITEN_DIMS) and np.isfinite(w).all() and mean.shape == (40,)


def test_latent_union_score_equals_a_loop():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 120)
    recs = [random_record("mlp", 6, rng, label=c) for c in range(3)]
    single = random_record("mlp", 6, rng)
    kw = dict(seed=2, bits=3, tables=4, device="cpu")
    lat = S.latent_record(X, labels, recs, **kw)
    lat1 = S.latent_record(X[:50], None, [single], **kw)
    Q = rng.normal(size=(61, 6)).astype(np.float32)
    tau = 2.0
    got, got1 = S.latent_coverage(Q, [(recs, lat), ([single], lat1)], seed=2, tau=tau, device="cpu")
    ref = np.zeros(4)
    for i in range(61):
        for t in range(4):
            best = 0.0
            for r, a in zip(recs, lat["aes"]):
                code = int(S.latent_codes(S.encode_latent(Q[i:i + 1], [r])[0], a, seed=2)[t, 0])
                best = max(best, min(1.0, dense(a).get((t, code), 0) / tau))
            ref[t] += best / 61
    np.testing.assert_allclose(got["per_table"], ref, atol=1e-12)
    assert got["per_ae"].shape == (3,)
    # one autoencoder: exactly the rows / embedding formula over the target's code counts
    t_counts = rc.code_counts(S.latent_codes(S.encode_latent(Q, [single])[0], lat1["aes"][0], seed=2))
    np.testing.assert_allclose(got1["per_table"], rc.coverage_score(t_counts, lat1["aes"][0], 4, tau), atol=1e-12)


# ------------------------------------------------------------------------------- hubs
def test_planted_only_one_sources_embeddings_cover_the_target(tmp_path):
    """Three sources with the same rows: the rows space cannot tell them apart, the embeddings can."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    centres = rng.normal(size=(3, 16)) * 3
    emb = {f"s{i}": centres[i] + rng.normal(size=(200, 16)) * 0.3 for i in range(3)}
    with fitsketch.open(tmp_path / "h") as hub:
        for name, e in emb.items():
            hub.add(name, rows, embedding=e)
        q = centres[1] + rng.normal(size=(80, 16)) * 0.3
        by_rows = hub.search(rows, method="coverage")
        assert len({m.score for m in by_rows}) == 1
        res = hub.search(rows, method="coverage", coverage_space="embedding", embedding=q)
        assert [m.name for m in res][0] == "s1" and res[0].score > 0.5 > res[1].score
        assert res[0].evidence["space"] == "embedding" and res[0].evidence["target_rows"] == 80
        # the query may be a sketch: this space needs its embeddings, not its rows
        sk = hub.search(fitsketch.sketch_data(rows, hub.config), method="coverage", coverage_space="embedding", embedding=q)
        assert [(m.name, m.score) for m in sk] == [(m.name, m.score) for m in res]


def test_planted_only_one_sources_latents_cover_the_target(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    names = [f"px{i}" for i in range(64)]
    perm = np.random.default_rng(1).permutation(len(y))
    train, test = perm[:700], perm[1200:]
    groups = {"s012": [0, 1, 2], "s345": [3, 4, 5], "s6789": [6, 7, 8, 9]}
    with fitsketch.open(tmp_path / "h", config=SketchConfig(partition_size=100)) as hub:
        for name, cls in groups.items():
            idx = train[np.isin(y[train], cls)]
            hub.add(name, pd.DataFrame(X[idx], columns=names), autoencoder=True, labels=y[idx], ae_config=FAST_AE)
        q = test[np.isin(y[test], [3, 4])]
        res = hub.search(pd.DataFrame(X[q], columns=names), method="coverage", coverage_space="latent")
        with hub.store.read() as txn:
            lat = txn.get("extra", u64(hub.get("s345").id))["coverage_latent"]
    assert res[0].name == "s345" and res[0].score > res[1].score, [(m.name, m.score) for m in res]
    assert res[0].evidence["space"] == "latent" and res[0].evidence["autoencoders"] == 3
    assert res[0].evidence["closest_class"] in (3, 4)
    assert [a["n"] for a in lat["aes"]] == [int((y[train] == c).sum()) for c in (3, 4, 5)]


def test_fallback_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("plain", df)
        hub.add("emb", df, embedding=rng.normal(size=(60, 8)), autoencoder=True, ae_config=FAST_AE)
        # latent: "plain" has no autoencoder -> adaptivity for all, reason in the evidence and the plan
        res = hub.search(df, method="coverage", coverage_space="latent")
        assert {m.method for m in res} == {"adaptivity"}
        assert all("coverage_space='latent'" in m.evidence["fallback"] and "'plain'" in m.evidence["fallback"]
                   for m in res)
        assert "fell back to adaptivity" in hub.explain(df, method="coverage", coverage_space="latent").stages[2].detail
        with pytest.raises(E.FeatureMismatchError, match="coverage_fallback"):
            hub.search(df, method="coverage", coverage_space="latent", coverage_fallback=False)
        # a sketch query has no rows to encode
        sk = hub.search(fitsketch.sketch_data(df, hub.config), method="coverage", coverage_space="latent", where={})
        assert "sketch without its rows" in sk[0].evidence["fallback"]
        # embedding: the query must give its sample embeddings
        with pytest.raises(E.InvalidArgumentError, match="embedding=\\(n, d\\)"):
            hub.search(df, method="coverage", coverage_space="embedding")
        q = rng.normal(size=(30, 8))
        ok = hub.search(df, method="coverage", coverage_space="embedding", embedding=q)
        assert [m.name for m in ok] == ["emb"] and ok[0].evidence["space"] == "embedding"  # FAISS shortlist
        # an entry without the embedding record (written before coverage spaces)
        eid = hub.get("emb").id
        hub.store.transact(lambda t: t.put("extra", u64(eid), {k: v for k, v in t.get("extra", u64(eid)).items()
                                                              if k != "coverage_embedding"}))
        old = hub.search(df, method="coverage", coverage_space="embedding", embedding=q)
        assert old[0].method == "adaptivity" and "no embedding coverage sketch" in old[0].evidence["fallback"]
        with pytest.raises(E.FeatureMismatchError, match="coverage_space='embedding'"):
            hub.search(df, method="coverage", coverage_space="embedding", embedding=q, coverage_fallback=False)
        for bad in ("Rows", "", 3, None):
            with pytest.raises(E.InvalidArgumentError, match="coverage_space"):
                hub.search(df, method="coverage", coverage_space=bad)
        # other methods ignore it; rows stays today's behaviour
        assert hub.search(df, method="adaptivity", coverage_space="latent") == hub.search(df, method="adaptivity")
        assert hub.search(df, method="coverage", coverage_space="rows") == hub.search(df, method="coverage")
        hub.remove("emb")
        with hub.store.read() as txn:
            assert txn.get("extra", u64(eid)) is None


# ------------------------------------------------------------------------------- CLI and server
def _spaces_hub(path):
    rng = np.random.default_rng(4)
    frames = {f"s{i}": pd.DataFrame({"a": rng.normal(3 * i, 1, 80), "b": rng.normal(0, 1, 80)}) for i in range(3)}
    emb = {name: rng.normal(size=(80, 8)) + 4 * i for i, name in enumerate(frames)}
    with fitsketch.open(path, config=SketchConfig(partition_size=40)) as hub:
        for name, df in frames.items():
            hub.add(name, df, embedding=emb[name], autoencoder=True, ae_config=FAST_AE)
    q = pd.DataFrame({"a": rng.normal(3, 1, 50), "b": rng.normal(0, 1, 50)})
    return q, rng.normal(size=(50, 8)) + 4


def test_cli_coverage_space(tmp_path, capsys):
    from fitsketch.cli import main

    q, qe = _spaces_hub(tmp_path / "hub")
    q.to_csv(tmp_path / "q.csv", index=False)
    np.save(tmp_path / "qe.npy", qe)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    for space, extra in (("latent", ()), ("embedding", ("--embedding", tmp_path / "qe.npy"))):
        code, out, err = run("search", tmp_path / "hub", tmp_path / "q.csv", "--method", "coverage",
                             "--coverage-space", space, *extra, "--json")
        assert code == 0, err
        res = json.loads(out)
        assert len(res) == 3 and all(r["method"] == "coverage" and r["evidence"]["space"] == space for r in res)
    code, _, err = run("search", tmp_path / "hub", tmp_path / "q.csv", "--method", "coverage",
                       "--coverage-space", "embedding")
    assert code == 2 and "[invalid_argument]" in err and "--embedding FILE.npy" in err   # command-line terms
    code, _, err = run("search", tmp_path / "hub", tmp_path / "q.csv", "--coverage-space", "pixels")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'pixels'" in err


def test_server_coverage_space_equals_embedded(tmp_path):
    from fitsketch.client import connect
    from fitsketch.server import Server

    q, qe = _spaces_hub(tmp_path / "hub")
    sock_dir = tempfile.mkdtemp(dir="/tmp", prefix="fs")   # AF_UNIX paths must stay < 108 bytes
    with fitsketch.open(tmp_path / "hub", readonly=True, create=False) as hub:
        want = {sp: hub.search(q, method="coverage", coverage_space=sp, embedding=qe)
                for sp in ("rows", "embedding", "latent")}
    srv = Server(tmp_path / "hub", socket_path=os.path.join(sock_dir, "s.sock"), shutdown_grace=2.0).start()
    try:
        with connect(srv.url()) as c:
            for sp, res in want.items():
                got = c.search(q, method="coverage", coverage_space=sp, embedding=qe)
                assert got == res and got[0].evidence.get("space", "rows") == sp
            with pytest.raises(E.InvalidArgumentError, match="coverage_space"):
                c.search(q, method="coverage", coverage_space="pixels")
    finally:
        srv.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
