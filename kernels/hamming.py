# Hamming distances between packed binary codes (deep-hashing buckets, Meta4).
#
# A c-bit code is stored as ceil(c / 8) bytes (uint8 rows, np.packbits order; wider unsigned
# rows such as uint64 are read as their bytes). For queries xq (nq, nbytes) and a database
# xb (nb, nbytes):
#     D[i, j] = popcount(xq[i] XOR xb[j])          int32 (nq, nb)
# Padding bits past c are zero on both sides, so they never count. k-NN follows FAISS: the k
# smallest distances per query in increasing order, ties broken by the smaller database index
# (so every path gives the same I); when k > nb the missing slots are D = INT32_MAX, I = -1.
#
# The Triton kernel reads the rows as int32 words (rows zero-padded to a multiple of 4 bytes)
# and counts bits of the XOR with the SWAR popcount on uint32 lanes:
#     v -= (v >> 1) & 0x55555555;  v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
#     v = (v + (v >> 4)) & 0x0F0F0F0F;  popcount = (v * 0x01010101) >> 24
# The PyTorch path XORs uint8 rows and looks the bytes up in a 256-entry popcount table.
from __future__ import annotations

import numpy as np
import torch

from ._device import resolve_device

try:  # Triton is optional: the CUDA path needs it, the CPU path does not.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False

MISSING_D = np.iinfo(np.int32).max  # D of a k-NN slot with no database code (FAISS: "large")
MISSING_I = -1                      # I of a k-NN slot with no database code


# ----------------------------------------------------------------------------- Triton kernel
if _HAVE_TRITON:

    @triton.jit
    def _hamming_kernel(
        q_ptr,    # [nq, n_words] int32 query codes
        b_ptr,    # [nb, n_words] int32 database codes
        out_ptr,  # [nq, nb] int32 distances
        nq, nb, n_words,
        BLOCK_Q: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        qi = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BQ,)
        bi = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
        q_ok = qi < nq
        b_ok = bi < nb
        qrow = qi.to(tl.int64) * n_words
        brow = bi.to(tl.int64) * n_words
        acc = tl.zeros((BLOCK_Q, BLOCK_B), dtype=tl.int32)
        for w in range(0, n_words):
            q = tl.load(q_ptr + qrow + w, mask=q_ok, other=0).to(tl.uint32, bitcast=True)
            b = tl.load(b_ptr + brow + w, mask=b_ok, other=0).to(tl.uint32, bitcast=True)
            v = q[:, None] ^ b[None, :]  # (BQ, BB) uint32: logical shifts below
            v = v - ((v >> 1) & 0x55555555)
            v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
            v = (v + (v >> 4)) & 0x0F0F0F0F
            v = (v * 0x01010101) >> 24
            acc += v.to(tl.int32)
        ok = q_ok[:, None] & b_ok[None, :]
        tl.store(out_ptr + qi.to(tl.int64)[:, None] * nb + bi[None, :], acc, mask=ok)

    def _hamming_triton(xq: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """xq (nq, nbytes) uint8, xb (nb, nbytes) uint8 -> (nq, nb) int32 distances."""
        nq, nbytes = xq.shape
        nb = xb.shape[0]
        out = torch.zeros((nq, nb), dtype=torch.int32, device=xq.device)
        if nq == 0 or nb == 0 or nbytes == 0:
            return out
        pad = (-nbytes) % 4
        wq = torch.nn.functional.pad(xq, (0, pad)).contiguous().view(torch.int32)  # (nq, n_words)
        wb = torch.nn.functional.pad(xb, (0, pad)).contiguous().view(torch.int32)
        grid = (triton.cdiv(nq, 32), triton.cdiv(nb, 64))
        _hamming_kernel[grid](wq, wb, out, nq, nb, wq.shape[1], BLOCK_Q=32, BLOCK_B=64)
        return out
else:  # pragma: no cover
    _hamming_triton = None


# ----------------------------------------------------------------------------- PyTorch path
_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def _hamming_torch(xq: torch.Tensor, xb: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """xq (nq, nbytes) uint8, xb (nb, nbytes) uint8 -> (nq, nb) int32: uint8 XOR, table popcount,
    ``budget`` bytes of XOR at a time."""
    nq, nbytes = xq.shape
    nb = xb.shape[0]
    out = torch.zeros((nq, nb), dtype=torch.int32, device=xq.device)
    if nq == 0 or nb == 0 or nbytes == 0:
        return out
    table = _POPCOUNT8.to(xq.device)
    rows = max(1, budget // max(1, nb * nbytes))
    for i in range(0, nq, rows):
        x = torch.bitwise_xor(xq[i:i + rows, None, :], xb[None, :, :])  # (r, nb, nbytes) uint8
        out[i:i + rows] = table[x.long()].sum(dim=-1, dtype=torch.int32)
    return out


def _knn_torch(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest per row, ties to the smaller index: sort on the unique key D * nb + j."""
    nq, nb = dist.shape
    kk = min(k, nb)
    key = dist.to(torch.int64) * nb + torch.arange(nb, device=dist.device)  # (nq, nb), unique
    top = torch.topk(key, kk, dim=1, largest=False, sorted=True).values if kk else key[:, :0]
    d = torch.full((nq, k), MISSING_D, dtype=torch.int32, device=dist.device)
    i = torch.full((nq, k), MISSING_I, dtype=torch.int64, device=dist.device)
    d[:, :kk] = (top // max(nb, 1)).to(torch.int32)
    i[:, :kk] = top % max(nb, 1)
    return d, i


# ----------------------------------------------------------------------------- NumPy reference
def hamming_reference(xq, xb) -> np.ndarray:
    """The definition: unpack the bits and count the differing ones, pair by pair."""
    bq = np.unpackbits(_as_bytes(xq, "xq"), axis=1)  # (nq, 8 * nbytes)
    bb = np.unpackbits(_as_bytes(xb, "xb"), axis=1)
    out = np.zeros((bq.shape[0], bb.shape[0]), dtype=np.int32)
    for i in range(bq.shape[0]):
        out[i] = (bq[i][None, :] != bb).sum(axis=1)
    return out


def hamming_knn_reference(xq, xb, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS-style exact k-NN by Hamming distance, ties to the smaller index."""
    dist = hamming_reference(xq, xb)
    nq, nb = dist.shape
    d = np.full((nq, k), MISSING_D, dtype=np.int32)
    idx = np.full((nq, k), MISSING_I, dtype=np.int64)
    kk = min(k, nb)
    for i in range(nq):
        order = np.lexsort((np.arange(nb), dist[i]))[:kk]
        d[i, :kk] = dist[i, order]
        idx[i, :kk] = order
    return d, idx


# ----------------------------------------------------------------------------- dispatch
def _as_bytes(codes, name: str) -> np.ndarray:
    """Rows of packed codes as uint8 (nrows, nbytes); unsigned ints wider than 8 bits are viewed
    as their little-endian bytes (the bit count of an XOR does not depend on byte order)."""
    arr = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name} has shape {arr.shape}: expected (n_codes, n_bytes) packed codes")
    if arr.dtype.kind != "u":
        raise ValueError(f"{name} has dtype {arr.dtype}: pass packed codes as uint8 "
                         f"(np.packbits) or another unsigned integer type")
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).view(np.uint8)


def _prepare(xq, xb, device):
    dev = resolve_device(device)
    q = _as_bytes(xq, "xq")
    b = _as_bytes(xb, "xb")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"xq codes have {q.shape[1]} bytes but xb codes have {b.shape[1]}: "
                         f"both sides must use the same code length")
    t = torch.device(dev)
    return dev, torch.from_numpy(q).to(t), torch.from_numpy(b).to(t)


def _distances(dev, q, b):
    if dev == "cuda" and _hamming_triton is not None:
        return _hamming_triton(q, b)
    return _hamming_torch(q, b)


def hamming(xq, xb, device: str = "auto") -> np.ndarray:
    """All Hamming distances between packed codes ``xq`` (nq, nbytes) and ``xb`` (nb, nbytes):
    int32 (nq, nb)."""
    dev, q, b = _prepare(xq, xb, device)
    return _distances(dev, q, b).cpu().numpy()


def hamming_knn(xq, xb, k: int, device: str = "auto", *, query_block: int = 4096
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest codes by Hamming distance: ``D`` int32 (nq, k), ``I`` int64 (nq, k),
    increasing ``D``, ties to the smaller index; missing slots (k > nb) are INT32_MAX / -1."""
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k={k!r}: pass a non-negative integer number of neighbours")
    dev, q, b = _prepare(xq, xb, device)
    ds, is_ = [], []
    for i in range(0, q.shape[0], query_block):
        d, idx = _knn_torch(_distances(dev, q[i:i + query_block], b), int(k))
        ds.append(d.cpu())
        is_.append(idx.cpu())
    if not ds:
        return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.int64)
    return torch.cat(ds).numpy(), torch.cat(is_).numpy()
