"""Chunked adds (fitsketch.chunked): bounded memory, the exact parts of the whole file's sketch,
deterministic partitions, one progress bar over the whole add."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch import chunked
from fitsketch import coverage as C
from fitsketch.config import SketchConfig
from fitsketch.sketch import build_sketch


def _frame(rng, n):
    return pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 7, n),
                         "c": rng.choice(["red", "green", "blue"], n),
                         "t": [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps"], 5)) for _ in range(n)]})


def test_one_chunk_file_is_exactly_the_whole_frame(rng, tmp_path):
    df = _frame(rng, int(rng.integers(1, 400)))
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)), partition_size=int(rng.integers(1, 60)))
    got = chunked.sketch_file(path, cfg)
    ref = build_sketch(pd.read_csv(path), cfg)
    assert got.to_bytes() == ref.to_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_many_chunks_keep_the_exact_parts_and_are_deterministic(rng, tmp_path, monkeypatch, fmt):
    m = int(rng.integers(3, 17))
    rows = m * int(rng.integers(2, 6))            # rows per chunk, a multiple of m
    monkeypatch.setattr(chunked, "MIN_CHUNK_ROWS", rows)
    monkeypatch.setattr(chunked, "MAX_CHUNK_ROWS", rows)
    n = int(rng.integers(3 * rows + 1, 6 * rows))
    df = _frame(rng, n)
    path = tmp_path / f"d.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    cfg = SketchConfig(seed=int(rng.integers(0, 2**31)))
    got = chunked.sketch_file(path, cfg, partition_size=m)
    whole = build_sketch(pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path), cfg, partition_size=m)
    assert got.names == whole.names and got.kinds == whole.kinds and got.n_rows == n
    assert np.array_equal(got.signatures, whole.signatures)
    assert np.array_equal(got.counts, whole.counts)
    np.testing.assert_allclose(got.sums, whole.sums, rtol=1e-12)
    tg, tw = got.totals(), whole.totals()
    assert all(np.array_equal(tg[k], tw[k]) for k in ("feat", "bucket", "count"))
    # partitions never span chunks: full chunks of rows // m partitions, then the rest
    n_chunks = -(-n // rows)
    assert got.n_partitions == (n_chunks - 1) * (rows // m) + -(-(n - (n_chunks - 1) * rows) // m)
    # one coverage centre (the first chunk's), so coverage counts are those of the whole file coded there
    assert "more" not in got.coverage and int(got.coverage["count"].sum()) == n * got.coverage["tables"]
    first = build_sketch(df.iloc[:rows] if fmt == "parquet" else pd.read_csv(path, nrows=rows), cfg, partition_size=m)
    np.testing.assert_allclose(got.coverage["center"], first.coverage["center"], rtol=1e-12)
    # chunk i's rows are shuffled by (seed, i): the same file gives the same sketch
    again = chunked.sketch_file(path, cfg, partition_size=m)
    assert again.to_bytes() == got.to_bytes()
    other = chunked.sketch_file(path, cfg.replace(seed=cfg.seed + 1), partition_size=m)
    assert not np.array_equal(other.hist["part"], got.hist["part"]) or not np.array_equal(other.signatures,
                                                                                         got.signatures)


def test_cli_add_is_chunked_and_progress_only_when_asked(rng, tmp_path, monkeypatch, capsys):
    from fitsketch.cli import main

    monkeypatch.setattr(chunked, "MIN_CHUNK_ROWS", 50)
    monkeypatch.setattr(chunked, "MAX_CHUNK_ROWS", 50)
    df = _frame(rng, 173)
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    hub = tmp_path / "hub"
    assert main(["init", str(hub), "--partition-size", "10"]) == 0
    capsys.readouterr()
    assert main(["add", str(hub), "a", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    e = json.loads(out)
    assert e["n_rows"] == 173 and e["n_partitions"] == 3 * 5 + 3 and err == ""      # not a terminal: no bar
    with fitsketch.open(hub, create=False) as h:
        entry = chunked.add_file(h, "b", path, progress=True)
        assert entry.n_rows == 173
    err = capsys.readouterr().err
    assert "added" in err and "100%" in err                 # one bar, left on screen after the add
    with fitsketch.open(hub, create=False) as h:
        with h.store.read() as txn:
            sa = fitsketch.signature_records.decode(txn.get("signatures", fitsketch.storage.u64(h.get("a").id)))
        assert np.array_equal(sa, build_sketch(df, h.config).signatures)
    assert main(["add", str(hub), "a", str(path)]) == 2     # the name exists: nothing read
    assert "exists" in capsys.readouterr().err


def test_chunked_refuses_bad_files(tmp_path):
    cfg = SketchConfig()
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(fitsketch.errors.EmptyDataError):
        chunked.sketch_file(tmp_path / "empty.csv", cfg)
    with pytest.raises(fitsketch.errors.UnsupportedDataError):
        chunked.sketch_file(tmp_path / "missing.csv", cfg)
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(fitsketch.errors.UnsupportedDataError):
        chunked.sketch_file(tmp_path / "x.parquet", cfg)
