# Row codes for coverage: random-hyperplane (SimHash) codes of rows, many tables at once.
#
# For rows x (n, d), hyperplanes A (T, B, d) (T tables of B bits):
#     code_t(x) = sum_{j < B} [A[t, j] . x > 0] * 2**j          in [0, 2**B)
# Rows that point the same way share a code; the coverage score counts, per table, how much of
# a target's mass falls into codes where a source has rows. Projections are IEEE fp32 (TF32 off,
# ``input_precision="ieee"`` in Triton) so CPU and GPU give the same codes, up to projections
# within float rounding of zero, which the tests bound.
#
# The Triton kernel runs one program per block of rows and one table: it accumulates the
# (rows, bits) projection tile over d in blocks with tl.dot, then packs the sign bits with a
# dot against the powers of two. On CPU one BLAS product and shifted ORs do it (_row_codes_numpy).
from __future__ import annotations

import numpy as np
import torch

from ._device import resolve_device
from .hashing import uniform01

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False

MAX_BITS = 30

try:  # the compiled sign packing (kernels/_cminhash.c, built by `pip install`; optional)
    from . import _cminhash as _c
    if not hasattr(_c, "sign_codes"):    # a kernel built before these were added
        _c = None
except ImportError:  # pragma: no cover - no C compiler when installed
    _c = None


def hyperplanes(seed: int, tables: int, bits: int, features: np.ndarray) -> np.ndarray:
    """Gaussian hyperplanes ``(tables, bits, len(features))`` float32, one column per feature key.

    Counter-based (Box-Muller over kernels.hashing.uniform01) keyed by (seed, table, bit, feature
    key), so a feature's column is the same whatever other features a dataset has.
    """
    f = np.asarray(features, dtype=np.int64).reshape(1, 1, -1)
    t = np.arange(tables, dtype=np.int64).reshape(-1, 1, 1)
    j = np.arange(bits, dtype=np.int64).reshape(1, -1, 1)
    u1 = uniform01(t, j, f, 0, seed=seed ^ 0xC0DE)
    u2 = uniform01(t, j, f, 1, seed=seed ^ 0xC0DE)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


# ----------------------------------------------------------------------------- Triton kernel
if _HAVE_TRITON:

    @triton.jit
    def _rowcodes_kernel(
        x_ptr,      # [n, d] float32 rows
        a_ptr,      # [T, B, d] float32 hyperplanes
        out_ptr,    # [T, n] int64 codes
        n, d, B,
        BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        t = tl.program_id(1).to(tl.int64)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        bits = tl.arange(0, BLOCK_B)
        ks = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
        for k0 in range(0, d, BLOCK_D):
            k = k0 + ks
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * d + k[None, :],
                        mask=(rows[:, None] < n) & (k[None, :] < d), other=0.0)        # (BN, BD)
            a = tl.load(a_ptr + t * B * d + bits[None, :].to(tl.int64) * d + k[:, None],
                        mask=(bits[None, :] < B) & (k[:, None] < d), other=0.0)        # (BD, BB)
            acc = tl.dot(x, a, acc, input_precision="ieee")
        weight = tl.where(bits < B, (1 << bits).to(tl.int64), 0)                       # (BB,)
        code = tl.sum(tl.where(acc > 0, weight[None, :], 0), axis=1)                  # (BN,)
        tl.store(out_ptr + t * n + rows, code, mask=rows < n)

    def _row_codes_triton(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        T, B, _ = a.shape
        out = torch.zeros((T, n), dtype=torch.int64, device=x.device)
        if n == 0 or T == 0:
            return out
        block_b = max(16, triton.next_power_of_2(B))
        grid = (triton.cdiv(n, 32), T)
        _rowcodes_kernel[grid](x.contiguous(), a.contiguous(), out, n, d, B,
                               BLOCK_N=32, BLOCK_B=block_b, BLOCK_D=32)
        return out
else:  # pragma: no cover
    _row_codes_triton = None


# ----------------------------------------------------------------------------- PyTorch path
def _row_codes_torch(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x (n, d) fp32, a (T, B, d) fp32 -> (T, n) int64."""
    T, B, d = a.shape
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        proj = torch.einsum("nd,tbd->tnb", x, a)  # (T, n, B)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    # the set bits' powers of two summed by one float product: every partial sum is an integer below
    # 2**B, exact in float32 for B <= 24 (float64 up to MAX_BITS), so these are the codes of an int64
    # multiply-and-sum, ~4x faster on CPU
    ft = torch.float32 if B <= 24 else torch.float64
    weight = 2.0 ** torch.arange(B, device=x.device, dtype=ft)
    return ((proj > 0).to(ft) @ weight).to(torch.int64)


# ----------------------------------------------------------------------------- NumPy path (CPU)
def _row_codes_numpy(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """x (n, d) fp32, a (T, B, d) fp32 -> (T, n) int64: one (T*B, d) x (d, n) fp32 matrix product
    (BLAS), then each table's code OR-ed together from its B rows of signs, shifted (rows of n
    contiguous values: no (n, T, B) layout to transpose, no packing along a short axis). The same
    codes as :func:`_row_codes_torch` up to projections within float rounding of zero; ~6x faster
    on CPU."""
    fused = _fma_codes(x, None, a)
    if fused is not None:
        return fused.astype(np.int64)
    return _row_codes_blocks(lambda s, e: x[s:e], x.shape[0], a).astype(np.int64)


# Opt-in (issue 21, Parquet at >= 50 MB/s): the fused compiled codes below instead of the BLAS product.
# They are the same except where a projection is within float32 rounding of zero: the kernel sums
# each dot product in order with fused multiply-adds, OpenBLAS's sgemm in an order of its own (which
# differs between its CPU kernels too). On natural rows no code differed (0 of 2.26M, random shapes);
# on rows built so that a projection cancels to rounding error ~1% did. Off: sketches stay what the
# BLAS product gives; on: ~2-3x faster codes (bench/SUMMARY.md, "Parquet sketch path, seventh session").
FUSED_CODES = False


def _fma_codes(X: np.ndarray, center, a: np.ndarray, scalar: bool = False, force: bool = False):
    """:func:`_row_codes_blocks`' int32 codes in one compiled pass over the rows (``fma_codes``: each
    row's T x B projections accumulated in registers, k = 0 .. d - 1, one fused multiply-add a step
    from 0; no (T * B, rows) projection written out), of float32 rows ``X``, or of float64 rows ``X``
    centred by ``center`` to float32 (:func:`centered_f32`'s values); None without the kernel, or
    unless :data:`FUSED_CODES` (or ``force``). The same codes as the BLAS product up to projections
    within rounding of zero (see FUSED_CODES; tests/test_parquet_fastpaths.py)."""
    if _c is None or not hasattr(_c, "fma_codes") or not (FUSED_CODES or force):
        return None
    T, B, d = a.shape
    n = X.shape[0]
    out = np.zeros((T, n), dtype=np.int32)
    if n == 0 or T == 0 or B == 0:
        return out
    r = T * B
    r8 = -(-r // 8) * 8
    at = np.zeros((d, r8), dtype=np.float32)       # the hyperplanes as columns, zero past T * B
    at[:, :r] = a.reshape(r, d).T
    f64 = center is not None
    X = np.ascontiguousarray(X, dtype=np.float64 if f64 else np.float32)
    c = np.ascontiguousarray(center, dtype=np.float64) if f64 else np.zeros(1)
    _c.fma_codes(X, c, at, out, n, d, T, B, r8, n, 0, f64, scalar)
    return out


def _row_codes_blocks(block, n: int, a: np.ndarray) -> np.ndarray:
    """:func:`_row_codes_numpy`'s codes as int32 (B <= MAX_BITS = 30), the rows' fp32 block of
    rows ``[s, e)`` given by ``block(s, e)`` (C order)."""
    T, B, d = a.shape
    out = np.zeros((T, n), dtype=np.int32)            # B <= MAX_BITS = 30: codes fit int32
    if n == 0 or T == 0 or B == 0:
        return out
    a2 = a.reshape(T * B, d)
    # rows in blocks of ROW_BLOCK (the last one takes the remainder, so no block is smaller than
    # ROW_BLOCK unless x is): one (T*B, block) product at a time instead of a (T*B, n) matrix
    # (~77 MB at 200,000 rows), each element the same dot product of one row as in one product,
    # written into one buffer for every block (fresh memory costs more than the product);
    # then each table's code OR-ed together from its B rows of signs over sub-blocks in cache
    starts = list(range(0, max(n - ROW_BLOCK, 0) + 1, ROW_BLOCK)) if n >= ROW_BLOCK else [0]
    bounds = starts + [n]
    sub = 1 << 14
    bit = np.empty(min(sub, n), dtype=np.int32)
    pbuf = np.empty(T * B * max(e - s for s, e in zip(bounds[:-1], bounds[1:])), dtype=np.float32)
    for s0, e0 in zip(bounds[:-1], bounds[1:]):
        xb = block(s0, e0)
        proj = np.matmul(a2, xb.T, out=pbuf[:T * B * (e0 - s0)].reshape(T * B, e0 - s0))   # (T*B, rows of the block)
        if _c is not None:          # the same bits packed in one compiled pass over the block
            _c.sign_codes(proj, out, T, B, e0 - s0, n, s0)
            continue
        for s in range(0, e0 - s0, sub):
            e = min(s + sub, e0 - s0)
            b = bit[:e - s]
            for t in range(T):
                o = out[t, s0 + s:s0 + e]
                for j in range(B):
                    np.greater(proj[t * B + j, s:e], 0, out=b, casting="unsafe")
                    if j:
                        np.left_shift(b, j, out=b)
                    o |= b
    return out


def row_codes_centered(X: np.ndarray, center: np.ndarray, a: np.ndarray, device: str = "auto") -> np.ndarray:
    """``row_codes(centered_f32(X, center), a, device)``; on the CPU with the compiled kernel as int32
    codes and without the (n, d) fp32 copy: each block of rows is centred into one reused buffer
    just before its product (the same fp32 rows, the same products)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    c = np.ascontiguousarray(center, dtype=np.float64)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if (_c is None or resolve_device(device) != "cpu" or X.ndim != 2 or a.ndim != 3 or c.shape != (X.shape[1],)
            or a.shape[2] != X.shape[1] or a.shape[1] > MAX_BITS):
        return row_codes(centered_f32(X, c), a, device=device)
    fused = _fma_codes(X, c, a)
    if fused is not None:
        return fused
    n, d = X.shape
    zbuf = np.empty(min(n, 2 * ROW_BLOCK) * d, dtype=np.float32)

    def block(s, e):
        z = zbuf[:(e - s) * d].reshape(e - s, d)
        _c.center_f32(X[s:e], c, z, e - s, d)
        return z

    return _row_codes_blocks(block, n, a)


ROW_BLOCK = 1 << 15


def centered_f32(X, center) -> np.ndarray:
    """``(X - center)`` of rows ``X`` (n, d) as float32 (the float64 difference rounded once; beyond
    float32 -> +-inf), 0 where it is NaN (missing values sit at the centre): one compiled pass when
    the kernel is built, else NumPy in blocks of rows (:func:`centered_f32_numpy`, the same values)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    c = np.ascontiguousarray(center, dtype=np.float64)
    if _c is None or X.ndim != 2 or c.shape != (X.shape[1],):
        return centered_f32_numpy(X, c)
    Z = np.empty(X.shape, dtype=np.float32)
    _c.center_f32(X, c, Z, X.shape[0], X.shape[1])
    return Z


def centered_f32_numpy(X, center) -> np.ndarray:
    """The NumPy definition of :func:`centered_f32`."""
    X = np.asarray(X, dtype=np.float64)
    Z = np.empty(X.shape, dtype=np.float32)
    c = np.asarray(center, dtype=np.float64)[None, :]
    step = max(1, (1 << 15) // max(X.shape[1], 1))
    with np.errstate(over="ignore"):            # beyond fp32 -> +-inf, as the cast does
        for s in range(0, X.shape[0], step):
            z = Z[s:s + step]
            np.subtract(X[s:s + step], c, out=z, casting="unsafe")
            np.copyto(z, 0.0, where=np.isnan(z))
    return Z


# ----------------------------------------------------------------------------- NumPy reference
def row_codes_reference(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The definition, row by row and bit by bit (fp32 dot products)."""
    x = np.asarray(x, dtype=np.float32)
    a = np.asarray(a, dtype=np.float32)
    T, B, _ = a.shape
    out = np.zeros((T, x.shape[0]), dtype=np.int64)
    for t in range(T):
        for i in range(x.shape[0]):
            code = 0
            for j in range(B):
                if float(np.dot(a[t, j], x[i])) > 0:
                    code |= 1 << j
            out[t, i] = code
    return out


def row_codes(x, a, device: str = "auto") -> np.ndarray:
    """SimHash codes ``(T, n)`` int64 of rows ``x`` (n, d) under hyperplanes ``a`` (T, B, d)."""
    dev = resolve_device(device)
    x = np.ascontiguousarray(x, dtype=np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if x.ndim != 2 or a.ndim != 3 or a.shape[2] != x.shape[1]:
        raise ValueError(f"shapes do not chain: x {x.shape}, hyperplanes {a.shape}")
    if a.shape[1] > MAX_BITS:
        raise ValueError(f"{a.shape[1]} bits per table: at most {MAX_BITS}")
    if dev == "cpu":
        return _row_codes_numpy(x, a)
    t = torch.device(dev)
    xt, at = torch.from_numpy(x).to(t), torch.from_numpy(a if a.flags.writeable else a.copy()).to(t)
    if dev == "cuda" and _row_codes_triton is not None:
        out = _row_codes_triton(xt, at)
    else:
        out = _row_codes_torch(xt, at)
    return out.cpu().numpy()


def code_counts(codes: np.ndarray) -> dict:
    """Sparse counts per (table, code): ``{"table", "code", "count"}``, each in the narrowest unsigned
    type holding its values (table uint8 / uint16, code uint16 / uint32, count uint8 / uint16 / uint32)."""
    T, n = codes.shape
    top = int(codes.max()) + 1 if codes.size else 0
    if codes.size and int(codes.min()) >= 0 and T * top <= max(1 << 16, codes.size):
        # few cells (T x 2^bits, e.g. 8 x 4,096): count them all and keep the non-empty ones,
        # the np.unique of the keys below without sorting n x T keys (a table at a time: no (T, n)
        # int64 temporary)
        cnt = np.concatenate([np.bincount(codes[t], minlength=top) for t in range(T)])
        nz = np.flatnonzero(cnt)
        uniq = (nz // top) * (1 << 32) + nz % top
        cnt = cnt[nz]
    else:
        key = np.arange(T, dtype=np.int64).reshape(-1, 1) * (1 << 32) + codes
        uniq, cnt = np.unique(key.reshape(-1), return_counts=True)
    # the narrowest integer types that hold the values: these counts are most of an entry's bytes
    table_t = np.uint8 if T <= 256 else np.uint16
    code_t = np.uint16 if (codes.size == 0 or int(codes.max()) < (1 << 16)) else np.uint32
    # counts too: most codes hold a row or two, so uint8 where every count fits (a quarter of the
    # uint32 bytes: ~52 of an entry's 263 KiB on 5,000 real-valued rows x 32 columns); readers
    # widen before any arithmetic (source_counts, coverage_score, coverage._sum_counts)
    return {"table": (uniq >> 32).astype(table_t), "code": (uniq & 0xFFFFFFFF).astype(code_t),
            "count": narrow_counts(cnt)}


def narrow_counts(cnt: np.ndarray) -> np.ndarray:
    """Non-negative counts (below 2^32) in the narrowest of uint8 / uint16 / uint32 holding them all."""
    top = int(cnt.max()) if len(cnt) else 0
    return cnt.astype(np.uint8 if top < (1 << 8) else np.uint16 if top < (1 << 16) else np.uint32)


def source_counts(s_counts: dict, table: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The source's count at each ``(table[i], code[i])`` (0 where it has none) -> float64, shape of ``code``."""
    tk = np.asarray(table).astype(np.int64) * (1 << 32) + np.asarray(code).astype(np.int64)
    sk = s_counts["table"].astype(np.int64) * (1 << 32) + s_counts["code"].astype(np.int64)
    order = np.argsort(sk)
    sk_sorted = sk[order]
    pos = np.searchsorted(sk_sorted, tk)
    pos_c = np.minimum(pos, max(len(sk_sorted) - 1, 0))
    hit = (pos < len(sk_sorted)) & (sk_sorted[pos_c] == tk) if len(sk_sorted) else np.zeros(tk.shape, bool)
    return np.where(hit, s_counts["count"][order][pos_c].astype(np.float64) if len(sk_sorted) else 0.0, 0.0)


def coverage_score(t_counts: dict, s_counts: dict, tables: int, tau: float) -> np.ndarray:
    """Per table: ``sum_b p_target(b) * min(1, n_source(b) / tau)`` -> float64 ``(tables,)``."""
    out = np.zeros(tables, dtype=np.float64)
    n_src = source_counts(s_counts, t_counts["table"], t_counts["code"])
    tt = t_counts["table"].astype(np.int64)
    t_tot = np.bincount(tt, weights=t_counts["count"].astype(np.float64), minlength=tables)
    w = t_counts["count"].astype(np.float64) / np.maximum(t_tot[tt], 1.0)
    np.add.at(out, tt, w * np.minimum(1.0, n_src / tau))
    return out
