"""Reconstruction error through a fleet of autoencoders: batched fleet vs one at a time.

100 MLP autoencoders 64 -> 32 -> 8 -> 32 -> 64 (ReLU between layers), 10,000 samples, per-sample
MSE (E, n). The fleet is ``fitsketch.kernels.recon_error`` (all autoencoders per batched matmul,
fused MSE reduction on GPU); the baseline is a Python loop over the autoencoders, each run with
plain PyTorch (``x @ W + b``), the way a per-model scorer would.

    python -m bench.bench_recon [--quick] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import numpy as np
import torch

from fitsketch.kernels import recon_error as rk
from fitsketch.kernels._device import resolve_device

from . import harness as H
from .synth import mlp_fleet

DIMS = [64, 32, 8, 32, 64]


def loop_baseline(x: torch.Tensor, layers) -> torch.Tensor:
    """One autoencoder at a time: (E, n) MSE."""
    n_ae = layers[0][0].shape[0]
    out = []
    with torch.no_grad():
        for e in range(n_ae):
            h = x
            for li, (w, b) in enumerate(layers):
                h = h @ w[e] + b[e]
                if li < len(layers) - 1:
                    h = torch.relu(h)
            out.append(((h - x) ** 2).mean(dim=1))
    return torch.stack(out)


def suite(opts: H.Options) -> dict:
    H.setup(opts)
    args = opts
    device = resolve_device(args.device)
    n_ae, n = (20, 2_000) if args.quick else (100, 10_000)
    repeats = args.repeats or 5

    layers = mlp_fleet(n_ae, DIMS, seed=args.seed)
    x = np.random.default_rng(args.seed).random((n, DIMS[0])).astype(np.float32)
    tdev = torch.device(device)
    xt = torch.from_numpy(x).to(tdev)
    lt = [(torch.from_numpy(w).to(tdev), torch.from_numpy(b).to(tdev)) for w, b in layers]

    fleet = H.timeit(lambda: rk.recon_error(xt, lt, "mse", device=device), repeats=repeats, warmup=1,
                     device=device)
    base = H.timeit(lambda: loop_baseline(xt, lt).cpu().numpy(), repeats=repeats, warmup=1, device=device)
    err = float(np.max(np.abs(fleet["result"] - base["result"])))
    assert err < 1e-4, f"fleet and loop disagree by {err}"
    ratio = base["p50_s"] / fleet["p50_s"]
    evals = n_ae * n
    rows = [
        {"path": f"fleet recon_error ({device}, batched)", "time": H.spread(fleet),
         "sample-AE evals/s": evals / fleet["p50_s"]},
        {"path": "loop over autoencoders (torch, one at a time)", "time": H.spread(base),
         "sample-AE evals/s": evals / base["p50_s"]},
    ]
    print(f"\n## Reconstruction error: {n_ae} autoencoders {'->'.join(map(str, DIMS))} x {n} samples\n")
    print(H.markdown_table(rows, ["path", "time", "sample-AE evals/s"]))
    print(f"\nspeed-up: {ratio:.1f}x (target 10x); max |fleet - loop| = {err:.2e}")
    ctx = H.context(device, args.quick)
    wl = f"{n_ae} autoencoders x {n} samples"
    out_rows = [
        H.row(ctx, "recon", wl, "fleet recon_error (batched)", "time_p50", fleet["p50_s"], unit="s",
              baseline="loop over autoencoders", baseline_value=base["p50_s"], p90_s=fleet["p90_s"]),
        H.row(ctx, "recon", wl, "fleet recon_error (batched)", "speedup", ratio, unit="x",
              baseline="issue target", baseline_value=10.0),
        H.row(ctx, "recon", wl, "fleet recon_error (batched)", "max_abs_diff", err, baseline="loop"),
    ]
    payload = {"params": {"n_autoencoders": n_ae, "n_samples": n, "dims": DIMS, "seed": args.seed},
               "fleet": fleet, "baseline_loop": base, "speedup": ratio, "max_abs_diff": err,
               "table": rows}
    path = H.write_suite("recon_quick" if args.quick else "recon", out_rows, out=args.out_dir, quick=args.quick,
                         tables=payload, env=H.environment(device))
    print(f"\nwrote {path}")
    return payload


def main(argv=None) -> dict:
    return suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
