"""MinHash throughput: fitsketch.kernels.minhash vs datasketch.MinHash.bulk.

End to end from Python string tokens (10,000 sets x 1,000 tokens, 128 permutations; datasketch
on a subset, its tokens pre-encoded to bytes outside the timing, which favours it), then the
two stages apart: hashing the strings (``tokens_to_csr``) and the signature arithmetic on
32-bit integer sets (``minhash_csr``), the latter also with the eager PyTorch path.

    python -m bench.bench_minhash [--quick] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import os
import time


from fitsketch.kernels import minhash as mh
from fitsketch.kernels._device import resolve_device

from . import _common as C


def main(argv=None) -> dict:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.setup(args)
    device = resolve_device(args.device)
    n_sets, set_size, num_perm = (1_000, 200, 128) if args.quick else (10_000, 1_000, 128)
    n_ds = 100 if args.quick else 1_000
    repeats = args.repeats or 3

    sets = C.token_sets(n_sets, set_size, seed=args.seed)
    values, offsets = mh.tokens_to_csr(sets, seed=args.seed)
    rows = []

    # first call: includes the one-off torch.compile of the CPU block (cached on disk after)
    t0 = time.perf_counter()
    mh.minhash_csr(values, offsets, num_perm, seed=args.seed, device=device)
    first_call_s = time.perf_counter() - t0

    ours = C.timeit(lambda: mh.minhash(sets, num_perm, seed=args.seed, device=device),
                    repeats=repeats, warmup=1, device=device)
    hashing = C.timeit(lambda: mh.tokens_to_csr(sets, seed=args.seed), repeats=repeats, warmup=0)
    arith = C.timeit(lambda: mh.minhash_csr(values, offsets, num_perm, seed=args.seed, device=device),
                     repeats=repeats, warmup=1, device=device)

    eager = None
    if device == "cpu":  # the eager PyTorch path, on a subset (it is the slow fallback)
        n_eager = max(1, n_sets // 100)
        prev = os.environ.get("FITSKETCH_COMPILE")
        os.environ["FITSKETCH_COMPILE"] = "0"
        try:
            sub_v, sub_o = values[: offsets[n_eager]], offsets[: n_eager + 1]
            eager = C.timeit(lambda: mh.minhash_csr(sub_v, sub_o, num_perm, seed=args.seed, device="cpu"),
                             repeats=1, warmup=0)
        finally:
            if prev is None:
                os.environ.pop("FITSKETCH_COMPILE", None)
            else:
                os.environ["FITSKETCH_COMPILE"] = prev
        eager["n_sets"] = n_eager

    baseline = None
    try:
        import datasketch
        encoded = [[t.encode("utf8") for t in s] for s in sets[:n_ds]]
        baseline = C.timeit(lambda: datasketch.MinHash.bulk(encoded, num_perm=num_perm),
                            repeats=repeats, warmup=0)
        baseline["version"] = datasketch.__version__ if hasattr(datasketch, "__version__") else "?"
    except ImportError:  # pragma: no cover
        pass

    # sanity: one signature per set
    sig = ours["result"]
    assert sig.shape == (n_sets, num_perm)

    def sets_per_s(t, n):
        return n / t["median_s"]

    ours_sps = sets_per_s(ours, n_sets)
    rows.append({"path": f"fitsketch minhash ({device}), strings end to end", "sets": n_sets,
                 "time": C.spread(ours), "sets/s": ours_sps})
    rows.append({"path": "  stage: hash strings (tokens_to_csr, pandas SipHash)", "sets": n_sets,
                 "time": C.spread(hashing), "sets/s": sets_per_s(hashing, n_sets)})
    rows.append({"path": f"  stage: signatures of int sets (minhash_csr, {device})", "sets": n_sets,
                 "time": C.spread(arith), "sets/s": sets_per_s(arith, n_sets),
                 "Mhash/s": n_sets * set_size * num_perm / arith["median_s"] / 1e6})
    if eager is not None:
        rows.append({"path": "  int sets, eager PyTorch (no torch.compile)", "sets": eager["n_sets"],
                     "time": C.spread(eager), "sets/s": sets_per_s(eager, eager["n_sets"]),
                     "Mhash/s": eager["n_sets"] * set_size * num_perm / eager["median_s"] / 1e6})
    ratio = None
    if baseline is not None:
        ds_sps = sets_per_s(baseline, n_ds)
        ratio = ours_sps / ds_sps
        rows.append({"path": f"datasketch MinHash.bulk {baseline['version']} (bytes, subset)",
                     "sets": n_ds, "time": C.spread(baseline), "sets/s": ds_sps})
    print(f"\n## MinHash: {n_sets} sets x {set_size} tokens, {num_perm} permutations, device={device}\n")
    print(C.markdown_table(rows, ["path", "sets", "time", "sets/s", "Mhash/s"]))
    if ratio is not None:
        print(f"\nspeed-up vs datasketch (end to end, strings): {ratio:.1f}x "
              f"(integer sets: {sets_per_s(arith, n_sets) / sets_per_s(baseline, n_ds):.1f}x; "
              f"target 50x)")
    print(f"first call (includes one-off torch.compile when used): {first_call_s:.2f} s")

    payload = {"benchmark": "minhash", "quick": args.quick, **C.environment(device),
               "params": {"n_sets": n_sets, "set_size": set_size, "num_perm": num_perm,
                          "datasketch_sets": n_ds, "seed": args.seed},
               "first_call_s": first_call_s, "ours_end_to_end": ours, "stage_hashing": hashing,
               "stage_signatures_int": arith, "eager_int": eager, "baseline_datasketch": baseline,
               "speedup_vs_datasketch": ratio, "rows": rows}
    path = C.write_result("minhash_quick" if args.quick else "minhash", payload, out=args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
