"""JS-LSH adaptivity query vs exact pairwise Jensen-Shannon, on synthetic partition histograms.

10,000 source datasets x 10 partitions x 32 features x 16 bins per feature (100,000 source
partitions of 512 coordinates) and one target of 10 partitions drawn from family 0. The
adaptivity query projects the target's and every source partition's sqrt-distribution with the
JS-LSH kernel, forms band keys and checks collisions (adaptivity = share of target partitions that
collide with some partition of the source in some band; ties broken by the share of
(target partition, band) pairs that collide). The baseline computes the exact JS divergence
between each target partition and every source partition (vectorized NumPy) and ranks sources
by the mean (``fitsketch.partitions.js_divergence``, the engine's own reference, in bits; the
ranking is the same in any log base). Reported: speed ratio and top-10 agreement |top10(adaptivity) n top10(exact JS)| / 10.

    python -m bench.bench_jslsh [--quick] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import numpy as np

from fitsketch.kernels import jslsh
from fitsketch.kernels._device import resolve_device
from fitsketch.partitions import js_divergence

from . import harness as H
from .synth import partition_histograms, sample_partitions

K, L, R = 3, 12, 0.15  # hashes per band, bands, bucket width


def _sqrt_rows(hist: np.ndarray) -> np.ndarray:
    """(..., n_features, n_bins) per-feature distributions -> rows sqrt(P), P = concat / n_features."""
    n_features, n_bins = hist.shape[-2:]
    p = hist.reshape(-1, n_features * n_bins) / np.float32(n_features)
    return np.sqrt(p).astype(np.float32)


def adaptivity(target_rows, source_rows, n_sources, n_partitions, a, b, device):
    """(n_sources,) adaptivity and band-level tie-break, from one batched projection.

    Band keys mix the band index in, so all target keys go in one sorted table with, per key, the
    bitmask of the target partitions carrying it; each source key is looked up once.
    """
    n_t = target_rows.shape[0]
    kt = jslsh.band_keys(jslsh.project(target_rows, a, b, R, device=device), K, L)  # (T, L)
    ks = jslsh.band_keys(jslsh.project(source_rows, a, b, R, device=device), K, L)  # (S * P, L)
    uniq, inv = np.unique(kt.reshape(-1), return_inverse=True)
    masks = np.zeros(len(uniq), dtype=np.int64)
    np.bitwise_or.at(masks, inv, np.repeat(np.int64(1) << np.arange(n_t, dtype=np.int64), L))
    pos = np.clip(np.searchsorted(uniq, ks), 0, len(uniq) - 1)  # (S * P, L)
    hit = np.where(uniq[pos] == ks, masks[pos], 0)  # target partitions colliding, per band
    per_band = np.bitwise_or.reduce(hit.reshape(n_sources, n_partitions, L), axis=1)  # (S, L)
    per_source = np.bitwise_or.reduce(per_band, axis=1)  # (S,)
    bits = np.arange(n_t, dtype=np.int64)
    adapt = ((per_source[:, None] >> bits) & 1).sum(axis=1) / float(n_t)
    band_hits = ((per_band[:, :, None] >> bits) & 1).sum(axis=(1, 2)) / float(n_t * L)
    return adapt, band_hits


def exact_js_bits(p: np.ndarray, q: np.ndarray, block: int = 2048) -> np.ndarray:
    """(m, n) JS divergence in bits between every row of ``p`` and every row of ``q``: the engine's
    ``partitions.js_divergence`` (one row against many), over blocks of ``q`` to bound memory."""
    out = np.empty((p.shape[0], q.shape[0]))
    for lo in range(0, q.shape[0], block):
        for i in range(p.shape[0]):
            out[i, lo:lo + block] = js_divergence(p[i], q[lo:lo + block])
    return out


def suite(opts: H.Options) -> dict:
    H.setup(opts)
    device = resolve_device(opts.device)
    n_sources = 1_000 if opts.quick else 10_000
    n_partitions, n_features, n_bins = 10, 32, 16
    repeats = opts.repeats or 3
    seed = opts.seed

    hist, family, alpha, bases = partition_histograms(
        n_sources, n_partitions, n_features, n_bins, n_families=max(10, n_sources // 100), seed=seed)
    rng = np.random.default_rng(seed + 1)
    target_hist = sample_partitions(rng, bases[0], n_partitions, 500)  # (10, F, B)
    target_rows = _sqrt_rows(target_hist)
    source_rows = _sqrt_rows(hist)  # (n_sources * 10, F * B)
    feat = np.repeat(np.arange(n_features), n_bins)
    bucket = np.tile(np.arange(n_bins), n_features)
    a = jslsh.gaussian_projection(seed, feat, bucket, K * L)
    b = jslsh.offsets(seed, K * L, R)

    lsh = H.timeit(lambda: adaptivity(target_rows, source_rows, n_sources, n_partitions, a, b, device),
                   repeats=repeats, warmup=1, device=device)
    score, band_score = lsh["result"]

    tp = target_hist.reshape(n_partitions, -1) / n_features
    sp = hist.reshape(n_sources * n_partitions, -1) / n_features
    def exact_mean_js():
        return exact_js_bits(tp, sp).reshape(n_partitions, n_sources, n_partitions).mean(axis=(0, 2))

    exact = H.timeit(exact_mean_js, repeats=1, warmup=0)     # seconds a run: one is enough against ~100 ms
    js_mean = exact["result"]

    top_lsh = np.lexsort((np.arange(n_sources), -band_score, -score))[:10]
    top_js = np.argsort(js_mean, kind="stable")[:10]
    agreement = len(set(top_lsh.tolist()) & set(top_js.tolist())) / 10.0
    ratio = exact["p50_s"] / lsh["p50_s"]
    n_rows = n_sources * n_partitions
    rows = [
        {"method": f"adaptivity (JS-LSH, K={K}, L={L}, r={R}, {device})", "time": H.spread(lsh),
         "source partitions/s": n_rows / lsh["p50_s"]},
        {"method": "exact pairwise JS (NumPy)", "time": H.spread(exact),
         "source partitions/s": n_rows / exact["p50_s"]},
    ]
    print(f"\n## JS-LSH adaptivity: {n_sources} sources x {n_partitions} partitions x {n_features} "
          f"features x {n_bins} bins, target of {n_partitions} partitions\n")
    print(H.markdown_table(rows, ["method", "time", "source partitions/s"]))
    print(f"\nspeed-up: {ratio:.1f}x (target 100x); top-10 agreement with exact JS: {agreement:.1f} "
          f"(target 0.9); family-0 sources in adaptivity top-10: {int((family[top_lsh] == 0).sum())}")

    ctx = H.context(device, opts.quick)
    base = "exact pairwise JS (partitions.js_divergence)"
    wl = f"{n_sources} sources x {n_partitions} partitions"
    out_rows = [
        H.row(ctx, "jslsh", wl, "adaptivity (JS-LSH)", "query_p50", lsh["p50_s"], unit="s", baseline=base,
              baseline_value=exact["p50_s"], p90_s=lsh["p90_s"]),
        H.row(ctx, "jslsh", wl, "adaptivity (JS-LSH)", "speedup", ratio, unit="x", baseline="issue target",
              baseline_value=100.0),
        H.row(ctx, "jslsh", wl, "adaptivity (JS-LSH)", "top10_agreement", agreement, baseline="issue target",
              baseline_value=0.9),
    ]
    payload = {"params": {"n_sources": n_sources, "n_partitions": n_partitions,
                          "n_features": n_features, "n_bins": n_bins, "K": K, "L": L, "r": R,
                          "seed": seed},
               "adaptivity": lsh, "baseline_exact_js": exact, "speedup": ratio,
               "top10_agreement": agreement, "top10_adaptivity": top_lsh.tolist(),
               "top10_exact_js": top_js.tolist(), "table": rows}
    path = H.write_suite("jslsh_quick" if opts.quick else "jslsh", out_rows, out=opts.out_dir, quick=opts.quick,
                         tables=payload, env=H.environment(device))
    print(f"\nwrote {path}")
    return payload


def main(argv=None) -> dict:
    return suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
