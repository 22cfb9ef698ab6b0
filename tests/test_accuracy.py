"""Predicted accuracy (engine/accuracy.py, method="accuracy" / "auto"): the EM mixture, the
accuracy formula, the stored confusion matrix, parity over the socket, and bad inputs."""
import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import accuracy as A
from fitsketch import errors as E
from fitsketch.config import SketchConfig
from fitsketch.storage import u64

K = 4          # classes of the synthetic data
D = 6          # features
V = 5          # values per feature


def _class_conditionals(rng):
    """(K, D, V) per-class categorical distributions, well apart."""
    return rng.dirichlet(np.full(V, 0.4), size=(K, D))


def _draw(rng, P, pi, n):
    y = rng.choice(K, size=n, p=pi)
    X = np.empty((n, D), dtype=np.int64)
    for c in range(K):
        rows = np.flatnonzero(y == c)
        for f in range(D):
            X[rows, f] = rng.choice(V, size=len(rows), p=P[c, f]) + 1   # values 1..V: distinct log buckets
    return pd.DataFrame(X * 10, columns=[f"f{f}" for f in range(D)]), y


def test_em_recovers_a_planted_mixture(rng):
    P = _class_conditionals(rng)
    train, ytr = _draw(rng, P, np.full(K, 1.0 / K), 8000)
    pi = rng.dirichlet(np.ones(K))
    query, yq = _draw(rng, P, pi, 6000)
    planted = np.bincount(yq, minlength=K) / len(yq)   # the query's own class shares
    cfg = SketchConfig()
    names, kinds = list(train.columns), ["numeric"] * D
    rec = A.class_record(train, A.check_labels(ytr, len(ytr)), names, kinds, cfg)
    qb = A.query_buckets(query, names, kinds, list(range(D)), cfg)
    # features are independent given the class: naive Bayes is the true model, untempered
    ll = A.pooled_loglik(qb, len(query), [(rec, {f: f for f in range(D)})], rec["labels"], None)
    est = A.em_mixture(ll)
    assert np.abs(est - planted).max() <= 0.02, (est, planted)


def test_em_pools_classes_an_entry_never_saw(rng):
    """Two entries, each with half of the classes: pooled, every class of the query is recognized."""
    P = _class_conditionals(rng)
    names, kinds, cfg = [f"f{f}" for f in range(D)], ["numeric"] * D, SketchConfig()
    recs = []
    for half in ([0, 1], [2, 3]):
        p = np.zeros(K)
        p[half] = 0.5
        df, y = _draw(rng, P, p, 4000)
        recs.append((A.class_record(df, A.check_labels(y, len(y)), names, kinds, cfg), {f: f for f in range(D)}))
    pi = rng.dirichlet(np.ones(K))
    query, yq = _draw(rng, P, pi, 6000)
    qb = A.query_buckets(query, names, kinds, list(range(D)), cfg)
    ll = A.pooled_loglik(qb, len(query), recs, [0, 1, 2, 3], None)
    assert np.abs(A.em_mixture(ll) - np.bincount(yq, minlength=K) / len(yq)).max() <= 0.02


def test_merged_class_records_equal_the_record_of_the_whole(rng):
    P = _class_conditionals(rng)
    names, kinds, cfg = [f"f{f}" for f in range(D)], ["numeric"] * D, SketchConfig()
    a, ya = _draw(rng, P, np.array([0.5, 0.5, 0, 0]), int(rng.integers(2, 300)))
    b, yb = _draw(rng, P, np.array([0, 0.2, 0.4, 0.4]), int(rng.integers(2, 300)))
    ya[0], yb[0] = 0, 3   # both parts hold two classes at least
    ya[-1], yb[-1] = 1, 2
    rec = lambda df, y: A.class_record(df, A.check_labels(y, len(y)), names, kinds, cfg)  # noqa: E731
    merged = A.merge_records(rec(a, ya), rec(b, yb))
    whole = rec(pd.concat([a, b], ignore_index=True), np.concatenate([ya, yb]))
    assert merged["labels"] == whole["labels"]
    np.testing.assert_array_equal(merged["counts"], whole["counts"])
    order = lambda r: np.lexsort((r["bucket"], r["cls"], r["feat"]))  # noqa: E731
    for key in ("cls", "feat", "bucket", "count"):
        np.testing.assert_array_equal(np.asarray(merged[key])[order(merged)], np.asarray(whole[key])[order(whole)])


# ------------------------------------------------------------------ through the hub
def _labelled(rng, n, classes):
    """Rows of class c centred at 10 * (c + 1) in every column."""
    y = rng.choice(classes, size=n)
    X = 10.0 * (y[:, None] + 1) + rng.normal(0, 1.0, size=(n, 3))
    return pd.DataFrame(X, columns=["a", "b", "c"]), y


def _model(classes):
    """Nearest class centre over the classes the model knows: logits in sorted class order."""
    cs = np.array(sorted(classes), dtype=float)

    def predict(X):
        m = np.asarray(X, dtype=np.float64).mean(axis=1, keepdims=True)
        return -np.abs(m - 10.0 * (cs[None, :] + 1))
    return predict


def test_predicted_accuracy_is_the_sum_over_classes(tmp_path, rng):
    recalls = {"m1": {0: 0.9, 1: 0.5, 2: 0.7}, "m2": {0: 0.2, 1: 1.0, 2: 0.6, 3: 0.8}}
    with fitsketch.open(tmp_path / "hub") as hub:
        for name, ca in recalls.items():
            df, y = _labelled(rng, 200, sorted(ca))
            hub.add(name, df, labels=y, class_accuracy=ca)
        query, _ = _labelled(rng, 150, [0, 1, 2, 3])
        mix = rng.dirichlet(np.ones(5))
        mixture = {c: float(p) for c, p in zip([0, 1, 2, 3, 4], mix)}   # class 4: no model saw it
        res = {m.name: m for m in hub.search(query, method="accuracy", mixture=mixture)}
        for name, ca in recalls.items():
            want = sum(p * ca.get(c, 0.0) for c, p in mixture.items())
            assert res[name].score == pytest.approx(want, abs=1e-12)
            assert res[name].evidence["unseen_class_share"] == pytest.approx(
                sum(p for c, p in mixture.items() if c not in ca), abs=1e-4)
        # estimated mixture: the score is that mixture times the recalls, and in [0, 1]
        for m in hub.search(query, method="accuracy", accuracy_bootstrap=20):
            assert 0.0 <= m.score <= 1.0
            lo, hi = m.evidence["interval"]
            assert lo <= hi
            assert m.evidence["performance"] == "class_accuracy"


def test_confusion_from_model_and_validation_equals_sklearns(tmp_path, rng):
    from sklearn.metrics import confusion_matrix

    classes = [0, 1, 2]
    df, y = _labelled(rng, 120, classes)
    vdf, vy = _labelled(rng, int(rng.integers(30, 90)), [0, 1, 2, 3])   # class 3: unknown to the model
    vdf.iloc[:5] = vdf.iloc[:5] + rng.normal(0, 8, size=(5, 3))         # a few hard rows
    model = _model(classes)
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("m", df, labels=y, model=model, validation=(vdf, vy))
        with hub.store.read() as txn:
            rec = txn.get("extra", u64(hub.get("m").id))["classes"]
    perf = rec["perf"]
    pred = np.array(classes)[model(vdf.to_numpy()).argmax(axis=1)]
    want = confusion_matrix(vy, pred, labels=perf["labels"])
    np.testing.assert_array_equal(perf["confusion"], want)
    assert perf["labels"] == [0, 1, 2, 3]
    assert perf["source"] == "validation"
    assert perf["recall"][3] == 0.0   # a class absent from training: prior 0, no correct prediction


def test_accuracy_ranks_the_model_that_saw_the_query_classes(tmp_path, rng):
    with fitsketch.open(tmp_path / "hub") as hub:
        for name, cls in {"low": [0, 1], "high": [2, 3], "all": [0, 1, 2, 3]}.items():
            df, y = _labelled(rng, 300, cls)
            vdf, vy = _labelled(rng, 100, cls)
            hub.add(name, df, labels=y, model=_model(cls), validation=(vdf, vy))
        query, _ = _labelled(rng, 200, [0, 1])
        res = hub.search(query, method="accuracy")
        scores = {m.name: m.score for m in res}
        assert scores["low"] > 0.9 and scores["all"] > 0.9 and scores["high"] < 0.1
        assert set(res[0].evidence["mixture"]) <= {"0", "1", "2", "3"}
        assert res[0].evidence["mixture"].get("0", 0) + res[0].evidence["mixture"].get("1", 0) > 0.97


def test_auto_uses_accuracy_on_labelled_entries_and_label_free_otherwise(tmp_path, rng):
    with fitsketch.open(tmp_path / "hub") as hub:
        df, y = _labelled(rng, 200, [0, 1])
        hub.add("plain", df)
        query, _ = _labelled(rng, 100, [0, 1])
        auto = hub.search(query, method="auto")
        ref = hub.search(query, method="coverage")   # the label-free default (methods/accuracy.LABEL_FREE)
        assert [(m.name, m.score, m.method) for m in auto] == [(m.name, m.score, m.method) for m in ref]
        assert "no candidate entry was registered with labels" in auto[0].evidence["auto"]
        hub.add("labelled", df, labels=y, class_accuracy={0: 0.5, 1: 0.5})
        auto = hub.search(query, method="auto")
        assert [m.method for m in auto] == ["accuracy", "coverage"]   # labelled first, then the rest
        assert auto[0].name == "labelled"
        plan = hub.explain(query, method="auto")
        assert "auto: accuracy" in str(plan)
        with pytest.raises(E.NoLabelsError):
            hub.search(fitsketch.sketch_data(query, hub.config), method="accuracy")


@pytest.mark.parametrize("case", ["single_class", "nan", "unhashable", "mixed_kinds", "validation_without_model",
                                  "logit_labels_mismatch", "outputs_mismatch", "vocabulary_across_entries",
                                  "class_accuracy_missing_class", "perf_without_labels"])
def test_bad_label_inputs_raise_named_errors_and_leave_the_hub_unchanged(tmp_path, rng, case):
    df, y = _labelled(rng, 60, [0, 1, 2])
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("first", df, labels=y)
        before = (hub.names(), hub.stats()["generation"])
        kw = {"labels": y}
        err = E.LabelError
        if case == "single_class":
            kw["labels"] = np.zeros(len(y), dtype=int)
        elif case == "nan":
            lab = y.astype(float)
            lab[int(rng.integers(len(lab)))] = np.nan
            kw["labels"] = lab
        elif case == "unhashable":
            kw["labels"] = [[v] for v in y]
        elif case == "mixed_kinds":
            kw["labels"] = [str(v) if i % 2 else int(v) for i, v in enumerate(y)]
        elif case == "validation_without_model":
            kw["validation"] = (df, y)
            err = E.InvalidArgumentError
        elif case == "logit_labels_mismatch":
            kw.update(model=_model([0, 1, 2]), validation=(df, y), logit_labels=[0, 1])
        elif case == "outputs_mismatch":
            kw.update(model=_model([0, 1]), validation=(df, y))   # 2 outputs, 3 training classes
        elif case == "vocabulary_across_entries":
            kw["labels"] = np.array([f"c{v}" for v in y])   # the hub's labels are ints
        elif case == "class_accuracy_missing_class":
            kw["class_accuracy"] = {0: 0.9, 1: 0.8}
        elif case == "perf_without_labels":
            kw = {"class_accuracy": {0: 0.9}}
            err = E.InvalidArgumentError
        with pytest.raises(err) as ei:
            hub.add("second", df, **kw)
        assert ei.value.code in ("bad_labels", "invalid_argument", "dimension")
        assert (hub.names(), hub.stats()["generation"]) == before


def test_label_kind_counter_follows_removes(tmp_path, rng):
    df, y = _labelled(rng, 60, [0, 1])
    with fitsketch.open(tmp_path / "hub") as hub:
        hub.add("ints", df, labels=y)
        with pytest.raises(E.LabelError):
            hub.add("strs", df, labels=np.array([f"c{v}" for v in y]))
        hub.remove("ints")
        hub.add("strs", df, labels=np.array([f"c{v}" for v in y]))   # no int-labelled entry is left
        assert "strs" in hub


def test_accuracy_over_the_socket_equals_embedded(tmp_path, rng):
    from fitsketch.server import Server

    sock = tempfile.mkdtemp(dir="/tmp", prefix="fs")
    try:
        with fitsketch.open(tmp_path / "hub") as hub:
            for name, cls in {"low": [0, 1], "all": [0, 1, 2]}.items():
                df, y = _labelled(rng, 150, cls)
                vdf, vy = _labelled(rng, 60, cls)
                hub.add(name, df, labels=y, model=_model(cls), validation=(vdf, vy))
            query, _ = _labelled(rng, 80, [0, 1, 2])
            want = [(m.name, m.score, m.evidence) for m in hub.search(query, method="accuracy")]
        srv = Server(tmp_path / "hub", socket_path=os.path.join(sock, "s.sock")).start()
        try:
            with fitsketch.connect(os.path.join(sock, "s.sock")) as client:
                got = [(m.name, m.score, m.evidence) for m in client.search(query, method="accuracy")]
        finally:
            srv.stop()
        assert got == want
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def test_accuracy_across_shards_equals_one_hub(tmp_path, rng):
    """Two embedded shards and one served: every shard pools all shards' class counts (class_pool),
    so scores, mixtures and intervals equal one hub holding every entry."""
    from fitsketch import sharded as S
    from fitsketch.server import Server

    entries = {f"m{i}": sorted(rng.choice(4, size=int(rng.integers(2, 5)), replace=False).tolist()) for i in range(7)}
    data = {}
    for name, cls in entries.items():
        df, y = _labelled(rng, int(rng.integers(40, 120)), cls)
        vdf, vy = _labelled(rng, 40, cls)
        data[name] = (df, y, vdf, vy)
    query, _ = _labelled(rng, 90, [0, 1, 2, 3])
    paths = [tmp_path / f"s{i}.hub" for i in range(3)]
    with fitsketch.open(tmp_path / "all.hub") as single:
        for name, (df, y, vdf, vy) in data.items():
            single.add(name, df, labels=y, model=_model(entries[name]), validation=(vdf, vy))
            with fitsketch.open(paths[S.shard_of(name, 3)]) as shard:
                shard.add(name, df, labels=y, model=_model(entries[name]), validation=(vdf, vy))
        single.add("unlabelled", data["m0"][0])
        with fitsketch.open(paths[S.shard_of("unlabelled", 3)]) as shard:
            shard.add("unlabelled", data["m0"][0])
        want = {m: [(r.name, r.score, r.method, r.evidence) for r in single.search(query, k=20, method=m)]
                for m in ("accuracy", "auto")}
    sock = tempfile.mkdtemp(dir="/tmp", prefix="fs")
    srv = Server(paths[2], socket_path=os.path.join(sock, "2.sock")).start()
    try:
        with S.open_sharded([paths[0], paths[1], srv.url()]) as sh:
            for m, w in want.items():
                got = [(r.name, r.score, r.method, r.evidence) for r in sh.search(query, k=20, method=m)]
                assert got == w
    finally:
        srv.stop()
        shutil.rmtree(sock, ignore_errors=True)


def test_column_buckets_equal_quantize_column(rng):
    """The one-matrix path for numeric columns gives quantize_column's histogram buckets."""
    from fitsketch.quantize import quantize_column

    n = int(rng.choice([1, 7, 97, 1001]))
    vals = rng.normal(0, 10.0 ** rng.uniform(-3, 6), size=n)
    vals[rng.random(n) < 0.1] = np.nan
    vals[rng.random(n) < 0.05] = np.inf
    df = pd.DataFrame({"f": vals, "i": rng.integers(-50, 50, n), "b": rng.random(n) < 0.5,
                       "s": rng.choice(["x", "y", "z"], n), "t": ["a b c d"] * n,
                       "nan": np.full(n, np.nan)})
    names = list(df.columns)
    kinds = ["numeric", "numeric", "numeric", "categorical", "text", "numeric"]
    cfg = SketchConfig()
    got = {j: (r, h) for j, r, h in A.column_buckets(df, names, kinds, range(len(names)), cfg)}
    # an all-NaN column is left out ("f" too when its one row drew NaN)
    assert set(got) == {0, 1, 2, 3, 4} - ({0} if np.isnan(vals).all() else set())
    for j in got:
        col = quantize_column(names[j], df[names[j]], cfg, kinds[j])
        np.testing.assert_array_equal(got[j][0], col.rows)
        np.testing.assert_array_equal(got[j][1], col.hist)


def test_labelled_sketches_merge_and_register_like_add(tmp_path, rng):
    """fitsketch.sketch_data(part, labels=) of two parts, merged, registered with add_sketch: the same
    class record and the same predicted accuracy as hub.add of the whole."""
    df, y = _labelled(rng, int(rng.integers(20, 200)), [0, 1, 2])
    cut = int(rng.integers(5, len(df) - 5))
    y[:2], y[cut:cut + 2] = [0, 1], [1, 2]
    cfg = SketchConfig()
    center = fitsketch.sketch_data(df, cfg).coverage["center"]     # parts share the coverage centre
    a = fitsketch.sketch_data(df.iloc[:cut], cfg, labels=y[:cut], coverage_center=center)
    b = fitsketch.sketch_data(df.iloc[cut:].reset_index(drop=True), cfg, labels=y[cut:], coverage_center=center)
    merged = a.merge(b)
    again = fitsketch.Sketch.from_bytes(merged.to_bytes())
    ca = {0: 0.9, 1: 0.6, 2: 0.3}
    query, _ = _labelled(rng, 60, [0, 1])
    with fitsketch.open(tmp_path / "hub", config=cfg) as hub:
        hub.add("whole", df, labels=y, class_accuracy=ca)
        hub.add_sketch("parts", again, class_accuracy=ca)
        res = {m.name: m for m in hub.search(query, method="accuracy", accuracy_bootstrap=0)}
        with hub.store.read() as txn:
            recs = {n: txn.get("extra", u64(hub.get(n).id))["classes"] for n in ("whole", "parts")}
    for key in ("cls", "feat", "bucket", "count", "counts"):
        np.testing.assert_array_equal(recs["whole"][key], recs["parts"][key])
    assert res["whole"].score == res["parts"].score
    with pytest.raises(E.InvalidArgumentError, match="labels"):
        a.merge(fitsketch.sketch_data(df.iloc[cut:], cfg, coverage_center=center))


def test_auto_is_screened_as_its_label_free_default_until_an_entry_has_labels(tmp_path, rng):
    with fitsketch.open(tmp_path / "hub") as hub:
        df, y = _labelled(rng, 40, [0, 1])
        for i in range(9):
            hub.add(f"m{i}", df.sample(frac=1.0, random_state=i))
        q, _ = _labelled(rng, 30, [0, 1])
        plan = str(hub.explain(q, shortlist=2))
        assert "(coverage is screened by its proxy exact-js)" in plan   # the label-free default (LABEL_FREE)
        hub.add("lab", df, labels=y)
        plan = str(hub.explain(q, shortlist=2))
        assert "(accuracy is screened by its proxy exact-js)" in plan and "coverage is screened" not in plan


def test_a_shard_without_labelled_entries_answers_as_the_unlabelled_group(tmp_path, rng):
    """Given the other shards' class pool, a hub holding only unlabelled entries ranks them as the
    unlabelled group under auto (after the labelled ones, as one hub would) and returns nothing for
    accuracy (instead of refusing the sharded query)."""
    df, y = _labelled(rng, 80, [0, 1])
    q, _ = _labelled(rng, 40, [0, 1])
    with fitsketch.open(tmp_path / "a") as a, fitsketch.open(tmp_path / "b") as b:
        a.add("lab", df, labels=y, class_accuracy={0: 0.8, 1: 0.7})
        b.add("plain", df)
        pool = a.class_pool(q)
        assert pool["labels"] == [0, 1] and b.class_pool(q)["labels"] == []
        res = b.search(q, method="auto", class_pool=pool)
        assert [m.name for m in res] == ["plain"] and "registered without labels" in res[0].evidence["auto"]
        assert b.search(q, method="accuracy", class_pool=pool) == []
        with pytest.raises(E.NoLabelsError):
            b.search(q, method="accuracy")


def test_auto_screens_as_it_scores_when_coverage_cannot_score_the_query(tmp_path, rng):
    """auto's label-free method is coverage, which needs the query's rows (and, in
    coverage_space="embedding", its sample embeddings): a sketch query, or an embedding hub queried
    without embeddings, is screened *and* scored by adaptivity: the answer is adaptivity's own, through
    adaptivity's candidate stage (before, coverage's exact-js proxy screened it), and nothing raises."""
    cfg = SketchConfig(shortlist=3, partition_size=20)
    items = []
    for i in range(30):
        df, _ = _labelled(rng, int(rng.integers(60, 200)), list(rng.choice(4, size=int(rng.integers(1, 4)),
                                                                            replace=False)))
        items.append((f"m{i:02d}", fitsketch.sketch_data(df, cfg)))
    with fitsketch.open(tmp_path / "hub", config=cfg) as hub:
        hub.add_sketches(items)
        q = fitsketch.sketch_data(_labelled(rng, 120, [0, 1, 2])[0], cfg)
        auto = hub.search(q, k=3)
        ref = hub.search(q, k=3, method="adaptivity")
        assert [(m.name, m.score) for m in auto] == [(m.name, m.score) for m in ref]
        assert {m.method for m in auto} == {"adaptivity"}
        assert all("a sketch" in m.evidence["auto"] for m in auto)
        shortlist = next(s for s in hub.explain(q, k=3).stages if s.name == "shortlist")
        assert shortlist.detail.startswith("screen: adaptivity")
    with fitsketch.open(tmp_path / "emb", config=SketchConfig(coverage_space="embedding")) as hub:
        for i in range(3):
            df, _ = _labelled(rng, 80, [i % 2, 2])
            hub.add(f"e{i}", df, embedding=rng.normal(size=(80, 4)))
        q, _ = _labelled(rng, 50, [0, 2])
        auto = hub.search(q, k=3)
        ref = hub.search(q, k=3, method="adaptivity")
        assert [(m.name, m.score) for m in auto] == [(m.name, m.score) for m in ref]
        assert all("embedding=" in m.evidence["auto"] for m in auto)
        with_emb = hub.search(q, k=3, embedding=rng.normal(size=(50, 4)))
        assert {m.method for m in with_emb} == {"coverage"}


@pytest.mark.parametrize("damage", [["int"], {"int": -1}, {"float": 2}, {"str": "3"}])
def test_a_damaged_label_kind_count_is_a_named_error(tmp_path, rng, damage):
    """meta/label_kinds (labelled entries per label kind) is read from disk: a damaged record raises
    CorruptHubError (not an AttributeError / TypeError) on the paths that read it, and the add
    leaves the hub as it was."""
    with fitsketch.open(tmp_path / "hub") as hub:
        df, y = _labelled(rng, 60, [0, 1])
        hub.add("plain", df)
        hub.store.transact(lambda t: t.put("meta", b"label_kinds", damage))
        with pytest.raises(E.CorruptHubError, match="label_kinds"):
            hub.add("lab", df, labels=y, class_accuracy={0: 0.5, 1: 0.5})
        with pytest.raises(E.CorruptHubError, match="label_kinds"):
            hub.add_sketches([("lab2", fitsketch.sketch_data(df, hub.config, labels=y))])
        with pytest.raises(E.CorruptHubError, match="label_kinds"):
            hub.search(df, method="auto")
        assert "plain" in hub and "lab" not in hub and "lab2" not in hub


@pytest.mark.parametrize("n_features", [3, 3000])
def test_merged_class_records_of_wide_entries_sum_every_cell(rng, n_features):
    """merge_records sums the two records' counts per (feature, class, bucket), in that order, for
    entries of 2,048 features and more too (a packed key with a fixed 20-bit class field wrapped
    there: features 2,048 apart collided and the decoded feature went negative)."""
    def record(labels, m):
        return {"v": A.CLASSES_FORMAT, "labels": labels, "counts": rng.integers(1, 50, len(labels)),
                "cls": rng.integers(0, len(labels), m).astype(np.int32),
                "feat": np.concatenate([[n_features - 1], rng.integers(0, n_features, m - 1)]).astype(np.int32),
                "bucket": rng.integers(-(1 << 31), 1 << 31, m).astype(np.int32),
                "count": rng.integers(0, 1000, m).astype(np.uint32), "perf": None}
    a, b = record([0, 1, 2], 400), record([1, 2, 5], 300)
    b["feat"][:100], b["bucket"][:100] = a["feat"][:100], a["bucket"][:100]       # shared cells ...
    b["cls"][:100] = [1 + (c > 0) for c in a["cls"][:100]]                        # of shared classes (0 stays apart)
    merged = A.merge_records(a, b)
    labels = [0, 1, 2, 5]
    ref = {}
    for r in (a, b):
        for c, f, bk, n in zip(r["cls"].tolist(), r["feat"].tolist(), r["bucket"].tolist(), r["count"].tolist()):
            key = (f, labels.index(r["labels"][c]), bk)
            ref[key] = ref.get(key, 0) + n
    keys = sorted(ref)
    assert merged["labels"] == labels
    assert list(zip(merged["feat"].tolist(), merged["cls"].tolist(), merged["bucket"].tolist())) == keys
    np.testing.assert_array_equal(merged["count"], [ref[k] for k in keys])
