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

from . import _common as C

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


def main(argv=None) -> dict:
    args = C.parser(__doc__.splitlines()[0]).parse_args(argv)
    C.setup(args)
    device = resolve_device(args.device)
    n_ae, n = (20, 2_000) if args.quick else (100, 10_000)
    repeats = args.repeats or 5

    layers = C.mlp_fleet(n_ae, DIMS, seed=args.seed)
    x = np.random.default_rng(args.seed).random((n, DIMS[0])).astype(np.float32)
    tdev = torch.device(device)
    xt = torch.from_numpy(x).to(tdev)
    lt = [(torch.from_numpy(w).to(tdev), torch.from_numpy(b).to(tdev)) for w, b in layers]

    fleet = C.timeit(lambda: rk.recon_error(xt, lt, "mse", device=device), repeats=repeats, warmup=1,
                     device=device)
    base = C.timeit(lambda: loop_baseline(xt, lt).cpu().numpy(), repeats=repeats, warmup=1, device=device)
    err = float(np.max(np.abs(fleet["result"] - base["result"])))
    assert err < 1e-4, f"fleet and loop disagree by {err}"
    ratio = base["median_s"] / fleet["median_s"]
    evals = n_ae * n
    rows = [
        {"path": f"fleet recon_error ({device}, batched)", "time": C.spread(fleet),
         "sample-AE evals/s": evals / fleet["median_s"]},
        {"path": "loop over autoencoders (torch, one at a time)", "time": C.spread(base),
         "sample-AE evals/s": evals / base["median_s"]},
    ]
    print(f"\n## Reconstruction error: {n_ae} autoencoders {'->'.join(map(str, DIMS))} x {n} samples\n")
    print(C.markdown_table(rows, ["path", "time", "sample-AE evals/s"]))
    print(f"\nspeed-up: {ratio:.1f}x (target 10x); max |fleet - loop| = {err:.2e}")
    payload = {"benchmark": "recon", "quick": args.quick, **C.environment(device),
               "params": {"n_autoencoders": n_ae, "n_samples": n, "dims": DIMS, "seed": args.seed},
               "fleet": fleet, "baseline_loop": base, "speedup": ratio, "max_abs_diff": err,
               "rows": rows}
    path = C.write_result("recon_quick" if args.quick else "recon", payload, out=args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
