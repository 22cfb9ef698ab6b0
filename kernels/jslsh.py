# JS-LSH (Chen et al., NeurIPS 2019): for a distribution P (rows of sqrt(P) here),
#     h_j(P) = ceil((a_j . sqrt(P) + b_j) / r),   a_j ~ N(0, I),  b_j ~ U[0, r]
# ||sqrt(P) - sqrt(Q)||^2 = 2 * Hellinger^2(P, Q), which bounds JS divergence, so nearby
# distributions collide. K hashes are concatenated into one band key, L bands per partition.
#
# The coordinates of P are (aligned feature j, histogram bucket k); the random vector entry
# a[(j, k), h] is a counter-based normal drawn from (seed, j, k, h), so a target and a source
# sketched separately see the same a over their aligned features, and only the buckets that
# occur are ever materialized (gather of the union of buckets, then one dense matmul).
# Arithmetic is IEEE fp32 (TF32 off on GPU; the Triton kernel is a tiled tl.dot with
# input_precision="ieee", then + b, / r, ceil in fp32) so the CPU and GPU paths give the same
# buckets up to values within float rounding of a bucket edge: summation order differs, so a
# bucket may differ only where (a . sqrt(P) + b) / r is within ~1e-4 (relative) of an integer.
from __future__ import annotations

import numpy as np
import torch

from ._device import resolve_device
from .hashing import mix64, uniform01

try:  # Triton is optional: the CUDA path needs it, the CPU path does not.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False


class _RowCache:
    """Memo of ``gaussian_projection`` rows per (seed, n_hashes) and coordinate (feature, bucket):
    entries and queries keep meeting the same coordinates, and drawing a row costs ~2 x n_hashes
    counter-based hashes. Coordinates are found by a 64-bit mix of (feature, bucket) in a sorted
    array and then compared field by field, so a mix collision is a miss, never a wrong row: the
    memo of a pure function, results unchanged. Bounded (cleared when full)."""

    def __init__(self, max_rows: int = 1 << 16):
        self.max_rows = max_rows
        self.tables: dict = {}   # (seed, n_hashes) -> (keys sorted uint64, feature, bucket, rows)

    def get(self, seed: int, feature: np.ndarray, bucket: np.ndarray, n_hashes: int) -> np.ndarray:
        feature = np.asarray(feature, dtype=np.int64).reshape(-1)
        bucket = np.asarray(bucket, dtype=np.int64).reshape(-1)
        with np.errstate(over="ignore"):
            h = mix64(feature.view(np.uint64) ^ mix64(bucket.view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
        tag = (seed, n_hashes)
        keys, F, B, rows = self.tables.get(tag) or (np.zeros(0, np.uint64), np.zeros(0, np.int64),
                                                   np.zeros(0, np.int64), np.zeros((0, n_hashes), np.float32))
        out = np.empty((len(feature), n_hashes), dtype=np.float32)
        pos = np.minimum(np.searchsorted(keys, h), max(len(keys) - 1, 0))
        hit = (len(keys) > 0) & (keys[pos] == h) & (F[pos] == feature) & (B[pos] == bucket) if len(keys) else \
            np.zeros(len(h), dtype=bool)
        out[hit] = rows[pos[hit]]
        miss = np.flatnonzero(~hit)
        if len(miss):
            fresh = _gaussian_rows(seed, feature[miss], bucket[miss], n_hashes)
            out[miss] = fresh
            hm, first = np.unique(h[miss], return_index=True)
            new = ~np.isin(hm, keys)            # a mix collision with a cached coordinate stays uncached
            if len(keys) + int(new.sum()) > self.max_rows:
                keys, F, B, rows = keys[:0], F[:0], B[:0], rows[:0]
            take = miss[first[new]]
            keys = np.concatenate([keys, h[take]])
            order = np.argsort(keys, kind="stable")
            F = np.concatenate([F, feature[take]])[order]
            B = np.concatenate([B, bucket[take]])[order]
            rows = np.concatenate([rows, out[take]])[order]
            self.tables[tag] = (keys[order], F, B, rows)
        return out


    def snapshot(self) -> dict:
        """The coordinates held now, per (seed, n_hashes): their keys (arrays never changed in place:
        an insert replaces a table), what ``export`` leaves out."""
        return {tag: t[0] for tag, t in self.tables.items()}

    def export(self, since: dict | None = None) -> list:
        """``[seed, n_hashes, keys, feature, bucket, rows]`` of the rows of each table whose keys are
        not in ``since`` (``snapshot()`` taken earlier; None: every row), tables with none left out:
        what ``absorb`` takes (engine/prepare_procs.py: the rows a forked worker drew, sent back to
        the process that forked it)."""
        out = []
        for (s, h), t in self.tables.items():
            old = (since or {}).get((s, h))
            if old is not None and old is not t[0]:
                t = tuple(a[~np.isin(t[0], old)] for a in t)
            if old is not t[0] and len(t[0]):
                out.append([s, h, *t])
        return out

    def absorb(self, tables: list) -> None:
        """Add ``export``'s rows: the coordinates not held yet (a table that would outgrow
        ``max_rows`` is left as it is). Rows of a pure function: nothing looked up changes."""
        for s, h, keys, feature, bucket, rows in tables:
            tag = (int(s), int(h))
            keys, feature, bucket = (np.asarray(keys, np.uint64), np.asarray(feature, np.int64),
                                     np.asarray(bucket, np.int64))
            rows = np.asarray(rows, np.float32)
            if not (keys.ndim == 1 and feature.shape == bucket.shape == keys.shape
                    and rows.shape == (len(keys), tag[1])):
                raise ValueError("projection rows to absorb are malformed")
            held = self.tables.get(tag)
            if held is not None:
                new = ~np.isin(keys, held[0])
                keys, feature, bucket, rows = (np.concatenate([a, b[new]]) for a, b in
                                               zip(held, (keys, feature, bucket, rows)))
            if len(keys) > self.max_rows:
                continue
            order = np.argsort(keys, kind="stable")
            self.tables[tag] = (keys[order], feature[order], bucket[order], rows[order])


_ROWS = _RowCache()


def row_cache_snapshot() -> dict:
    """``_ROWS.snapshot()``: the memo of ``gaussian_projection`` (engine/prepare_procs.py)."""
    return _ROWS.snapshot()


def row_cache_export(since: dict | None = None) -> list:
    """``_ROWS.export(since)``."""
    return _ROWS.export(since)


def row_cache_absorb(tables: list) -> None:
    """``_ROWS.absorb(tables)``."""
    _ROWS.absorb(tables)


def gaussian_projection(seed: int, feature: np.ndarray, bucket: np.ndarray, n_hashes: int) -> np.ndarray:
    """``a`` rows for coordinates ``(feature[i], bucket[i])``: float32 ``(len(feature), n_hashes)``.

    Box-Muller over two counter-based uniforms keyed by (seed, feature, bucket, hash index);
    rows are memoized (``_RowCache``).
    """
    return _ROWS.get(seed, feature, bucket, n_hashes)


def _gaussian_rows(seed: int, feature: np.ndarray, bucket: np.ndarray, n_hashes: int) -> np.ndarray:
    feature = np.asarray(feature, dtype=np.int64).reshape(-1, 1)
    bucket = np.asarray(bucket, dtype=np.int64).reshape(-1, 1)
    h = np.arange(n_hashes, dtype=np.int64).reshape(1, -1)
    u1 = uniform01(feature, bucket, 2 * h, seed=seed)
    u2 = uniform01(feature, bucket, 2 * h + 1, seed=seed)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32)


def offsets(seed: int, n_hashes: int, r: float) -> np.ndarray:
    """``b ~ U[0, r]``, float32 ``(n_hashes,)``."""
    u = uniform01(np.arange(n_hashes, dtype=np.int64), seed=seed ^ 0x5EED)
    return (u * r).astype(np.float32)


# ----------------------------------------------------------------------------- Triton kernel
if _HAVE_TRITON:

    @triton.jit
    def _project_kernel(
        p_ptr,        # [n, d] float32, rows are sqrt(P)
        a_ptr,        # [d, h] float32 random projections
        b_ptr,        # [h] float32 offsets in [0, r]
        out_ptr,      # [n, h] int64 buckets
        n, d, h, r,
        stride_pn, stride_pd, stride_ad, stride_ah,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, d, BLOCK_K):
            k = k0 + ks
            p = tl.load(p_ptr + rows[:, None].to(tl.int64) * stride_pn + k[None, :] * stride_pd,
                        mask=(rows[:, None] < n) & (k[None, :] < d), other=0.0)  # (BM, BK)
            a = tl.load(a_ptr + k[:, None].to(tl.int64) * stride_ad + cols[None, :] * stride_ah,
                        mask=(k[:, None] < d) & (cols[None, :] < h), other=0.0)  # (BK, BN)
            acc = tl.dot(p, a, acc, input_precision="ieee")  # fp32 products, fp32 sums
        b = tl.load(b_ptr + cols, mask=cols < h, other=0.0)
        v = tl.ceil((acc + b[None, :]) / r).to(tl.int64)  # (BM, BN)
        ok = (rows[:, None] < n) & (cols[None, :] < h)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * h + cols[None, :], v, mask=ok)

    def _project_triton(sqrt_p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: float) -> torch.Tensor:
        """(n, d) fp32 @ (d, h) fp32 -> (n, h) int64 buckets ``ceil((sqrt_p @ a + b) / r)``."""
        n, d = sqrt_p.shape
        h = a.shape[1]
        out = torch.empty((n, h), dtype=torch.int64, device=sqrt_p.device)
        if n == 0 or h == 0:
            return out
        grid = (triton.cdiv(n, 64), triton.cdiv(h, 32))
        _project_kernel[grid](sqrt_p, a, b.contiguous(), out, n, d, h, float(r),
                              sqrt_p.stride(0), sqrt_p.stride(1), a.stride(0), a.stride(1),
                              BLOCK_M=64, BLOCK_N=32, BLOCK_K=32)
        return out
else:  # pragma: no cover
    _project_triton = None


# ----------------------------------------------------------------------------- PyTorch path
def _project_torch(sqrt_p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: float) -> torch.Tensor:
    """(n, d) fp32 @ (d, h) fp32 -> (n, h) int64 buckets."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        v = (sqrt_p @ a + b) / r  # (n, h) fp32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return torch.ceil(v).to(torch.int64)


# ----------------------------------------------------------------------------- NumPy reference
def project_reference(sqrt_p: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """The definition: ``ceil((sqrt_p @ a + b) / r)`` in fp32, one row at a time."""
    sqrt_p = np.asarray(sqrt_p, dtype=np.float32)
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    out = np.zeros((sqrt_p.shape[0], a.shape[1]), dtype=np.int64)
    for i in range(sqrt_p.shape[0]):
        v = (sqrt_p[i] @ a + b) / np.float32(r)
        out[i] = np.ceil(v).astype(np.int64)
    return out


def project(sqrt_p, a, b, r: float, device: str = "auto") -> np.ndarray:
    """Batched JS-LSH buckets ``ceil((sqrt_p @ a + b) / r)``: int64 ``(n, n_hashes)``."""
    dev = resolve_device(device)
    sqrt_p = np.ascontiguousarray(sqrt_p, dtype=np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if sqrt_p.ndim != 2 or a.ndim != 2 or sqrt_p.shape[1] != a.shape[0] or b.shape != (a.shape[1],):
        raise ValueError(f"shapes do not chain: sqrt_p {sqrt_p.shape}, a {a.shape}, b {b.shape}")
    t = torch.device(dev)
    if dev == "cuda" and _project_triton is not None:
        out = _project_triton(torch.from_numpy(sqrt_p).to(t), torch.from_numpy(a).to(t),
                              torch.from_numpy(b).to(t), float(r))
    else:
        out = _project_torch(torch.from_numpy(sqrt_p).to(t), torch.from_numpy(a).to(t),
                             torch.from_numpy(b).to(t), float(r))
    return out.cpu().numpy()


def band_keys(hashes: np.ndarray, k: int, n_bands: int) -> np.ndarray:
    """Concatenate ``k`` consecutive hashes into one int64 key per band: ``(n, n_bands)``.

    ``hashes`` is ``(n, k * n_bands)`` int64. The key mixes the band index in, so equal keys in
    different bands never collide.
    """
    hashes = np.asarray(hashes, dtype=np.int64)
    n = hashes.shape[0]
    if hashes.shape[1] != k * n_bands:
        raise ValueError(f"expected {k * n_bands} hashes per row, got {hashes.shape[1]}")
    hb = hashes.reshape(n, n_bands, k).view(np.uint64)
    key = mix64(np.broadcast_to(np.arange(n_bands, dtype=np.uint64), (n, n_bands)))
    for i in range(k):
        with np.errstate(over="ignore"):
            key = mix64(key ^ hb[:, :, i])
    return key.view(np.int64)
