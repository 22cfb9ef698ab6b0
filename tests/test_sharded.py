"""Sharded hubs: search equals one hub holding every entry; routing is stable; shards must agree."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import sharded as S
from fitsketch.config import SketchConfig
from fitsketch.errors import EntryNotFoundError, NoSharedFeaturesError

CFG = SketchConfig(partition_size=50)
N_ENTRIES = 14


def _data(rng, n, loc, scale, cats):
    return pd.DataFrame({"a": rng.normal(loc, scale, n), "b": rng.exponential(scale, n) + loc,
                         "c": rng.choice(cats, n)})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One hub with every entry, and the same entries over 3 shards."""
    rng = np.random.default_rng(11)
    d = tmp_path_factory.mktemp("zoo")
    cats = np.array(["x", "y", "z", "w", "v"])
    names = [f"model-{i:02d}" for i in range(N_ENTRIES)]
    sketches = {n: fitsketch.sketch_data(_data(rng, 150 + 25 * i, i * 0.7, 1 + i % 4, cats[: 2 + i % 4]), CFG)
                for i, n in enumerate(names)}
    single = fitsketch.open(d / "all.hub", config=CFG)
    sh = S.open_sharded([d / f"s{i}.hub" for i in range(3)], config=CFG)
    for n, sk in sketches.items():
        single.add_sketch(n, sk, metadata={"i": int(n[-2:])})
    # the shards get the same entries through the bulk path (grouped by shard, batches of 4)
    assert sh.add_sketches([(n, sk, {"i": int(n[-2:])}) for n, sk in sketches.items()], batch=4) == N_ENTRIES
    yield single, sh, _data(rng, 300, 3.0, 2.0, cats[:3])
    single.close()
    sh.close()


@pytest.mark.parametrize("method", ["adaptivity", "exact-js", "l2", "js"])
@pytest.mark.parametrize("k", [1, 5, N_ENTRIES + 3])
def test_sharded_search_equals_one_hub(zoo, method, k):
    single, sh, query = zoo
    want = single.search(query, k=k, method=method)
    got = sh.search(query, k=k, method=method)
    assert [m.name for m in got] == [m.name for m in want]
    assert [m.score for m in got] == pytest.approx([m.score for m in want], rel=1e-12, abs=1e-12)
    assert [m.overlap for m in got] == [m.overlap for m in want]
    assert [m.metadata for m in got] == [m.metadata for m in want]


def test_sharded_search_with_where_and_a_prebuilt_sketch(zoo):
    single, sh, query = zoo
    q = fitsketch.sketch_data(query, CFG)
    want = single.search(q, k=4, where={"i": 3})
    got = sh.search(q, k=4, where={"i": 3})
    assert [m.name for m in got] == [m.name for m in want] == ["model-03"]
    with pytest.raises(NoSharedFeaturesError):
        sh.search(pd.DataFrame({"zz": ["completely", "other", "tokens"] * 20}), k=3)


def test_routing_is_stable_and_spreads_entries(zoo):
    _, sh, _ = zoo
    # pinned: blake2b-64 of the UTF-8 name, big-endian, mod n -- never Python's salted hash()
    assert [S.shard_of(n, 3) for n in ("model-00", "model-01", "model-02", "é", "a" * 300)] == [0, 2, 1, 0, 2]
    assert [S.shard_of(n, 5) for n in ("model-00", "é")] == [4, 3]
    code = "from fitsketch.sharded import shard_of; print([shard_of(f'n{i}', 7) for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert other == str([S.shard_of(f"n{i}", 7) for i in range(50)])
    counts = [len(s) for s in sh.shards]
    assert sum(counts) == N_ENTRIES and all(c > 0 for c in counts)
    for i, s in enumerate(sh.shards):
        assert all(S.shard_of(n, 3) == i for n in s.names())
    assert sh.misrouted() == []


def test_routed_and_aggregated_operations(zoo, tmp_path):
    single, sh, query = zoo
    assert len(sh) == len(single) == N_ENTRIES
    assert sh.names() == single.names()
    assert "model-05" in sh and "nope" not in sh and 3 not in sh
    assert sh.get("model-05").n_rows == single.get("model-05").n_rows
    assert sh.stats()["entries"] == N_ENTRIES
    assert sh.warm() == N_ENTRIES == sum(s._profile_index().n for s in sh.shards)
    sk = fitsketch.sketch_data(query, CFG)
    sh.add_sketch("temp", sk)
    assert "temp" in sh.shards[sh.shard_of("temp")]
    sh.remove("temp")
    assert "temp" not in sh and len(sh) == N_ENTRIES
    with pytest.raises(EntryNotFoundError):
        sh.get("temp")


def test_shards_must_share_one_config(tmp_path):
    fitsketch.open(tmp_path / "a.hub", config=CFG).close()
    fitsketch.open(tmp_path / "b.hub", config=CFG.replace(num_perm=64, lsh_l=16)).close()
    with pytest.raises(S.ShardConfigError, match="num_perm=64 vs 128"):
        S.open_sharded([tmp_path / "a.hub", tmp_path / "b.hub"])
    with fitsketch.open(tmp_path / "a.hub"):        # the failed open closed every shard it opened
        pass
    with pytest.raises(fitsketch.errors.InvalidArgumentError):
        S.open_sharded(str(tmp_path / "a.hub"))


def test_nearest_entry_level_merges_over_shards(tmp_path):
    rng = np.random.default_rng(3)
    emb = {f"e{i}": rng.normal(i % 3, 1.0, (12, 8)).astype(np.float32) for i in range(8)}
    with fitsketch.open(tmp_path / "one.hub", config=CFG) as one, \
            S.open_sharded([tmp_path / "s0.hub", tmp_path / "s1.hub"], config=CFG) as sh:
        for n, e in emb.items():
            df = pd.DataFrame({"v": rng.normal(size=12)})
            one.add(n, df, embedding=e)
            sh.add(n, df, embedding=e)
        xq = rng.normal(1, 1, (2, 8)).astype(np.float32)
        want = one.nearest(xq, 5, level="entry", index="flat")
        got = sh.nearest(xq, 5, level="entry", index="flat")
        for w, g in zip(want, got):
            assert [m.name for m in g] == [m.name for m in w]
            assert [m.score for m in g] == pytest.approx([m.score for m in w], abs=1e-6)
        with pytest.raises(fitsketch.errors.InvalidArgumentError, match="level='entry'"):
            sh.nearest(xq, 5, level="sample")


def test_served_and_embedded_shards_mixed(tmp_path):
    """Two shards behind servers (searched in the pool's threads) and one embedded (searched in the
    caller's thread): bulk add and search give what one hub holding every entry gives."""
    import os
    import shutil
    import tempfile

    from fitsketch.server import Server

    rng = np.random.default_rng(5)
    cats = np.array(["x", "y", "z", "w"])
    items = [(f"m{i:02d}", fitsketch.sketch_data(_data(rng, 120 + 10 * i, i * 0.5, 1 + i % 3, cats[: 2 + i % 3]), CFG),
              {"i": i}) for i in range(11)]
    query = _data(rng, 200, 2.0, 1.5, cats[:3])
    socks = tempfile.mkdtemp(dir="/tmp", prefix="fs")        # AF_UNIX paths stay short
    for i in range(2):
        fitsketch.open(tmp_path / f"srv{i}.hub", config=CFG).close()
    srvs = [Server(tmp_path / f"srv{i}.hub", socket_path=os.path.join(socks, f"{i}.sock"),
                   shutdown_grace=2.0).start() for i in range(2)]
    try:
        with fitsketch.open(tmp_path / "all.hub", config=CFG) as single, \
                S.open_sharded([srvs[0].url(), tmp_path / "emb.hub", srvs[1].url()], config=CFG) as sh:
            assert [type(s).__name__ for s in sh.shards] == ["Client", "Hub", "Client"]
            assert single.add_sketches(items) == sh.add_sketches(items, batch=2) == len(items)
            assert all(len(s) > 0 for s in sh.shards) and sh.misrouted() == [] and sh.names() == single.names()
            assert sh.warm() == len(items) == sum(srv.hub._profile_index().n for srv in srvs) + len(sh.shards[1])
            for method in ("adaptivity", "exact-js"):
                want = single.search(query, k=6, method=method)
                got = sh.search(query, k=6, method=method)
                assert [(m.name, m.overlap, m.metadata) for m in got] == [(m.name, m.overlap, m.metadata) for m in want]
                assert [m.score for m in got] == pytest.approx([m.score for m in want], rel=1e-12, abs=1e-12)
            # a refused group leaves its shard unchanged; the groups other shards accepted stay
            fresh = [(f"new-{i}", items[1][1]) for i in range(12)]
            refused = sh.shard_of(items[0][0])
            with pytest.raises(fitsketch.errors.EntryExistsError):
                sh.add_sketches(fresh + [items[0]])
            for i, s in enumerate(sh.shards):
                added = sum(sh.shard_of(n) == i for n, _ in fresh)
                assert len([n for n in s.names() if n.startswith("new-")]) == (0 if i == refused else added)
            assert 0 < sum(sh.shard_of(n) != refused for n, _ in fresh) < len(fresh)
    finally:
        for s in srvs:
            s.stop()
        shutil.rmtree(socks, ignore_errors=True)
