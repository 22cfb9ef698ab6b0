# MinHash over many sets at once (CSR form).
#
# Elements are 32-bit ints x in [0, 2**32) (tokens are first hashed by kernels.hashing).
# For permutation i with seeded a_i in [1, p), b_i in [0, p), p = 2**61 - 1 (Mersenne) and
# M = 2**32 - 1:
#     h_i(x) = ((a_i * x + b_i) mod p) mod M          in [0, M - 1]
#     sig[s, i] = min_{x in set s} h_i(x);   empty set -> EMPTY = M (never a hash value)
# Jaccard(A, B) ~ mean_i [sig_A[i] == sig_B[i]];  |A| ~ num_perm / sum_i(sig_A[i] / M) - 1.
# Signatures merge by element-wise min: sig(A u B) = min(sig(A), sig(B)).
#
# The fast paths compute a_i * x mod p exactly in signed int64 without overflow, splitting
# a = a_hi * 2**31 + a_lo and folding with 2**61 = 1 (mod p):
#     a_lo * x < 2**63,  a_hi * x < 2**62,  (s * 2**31) mod p = ((s & (2**30-1)) << 31) + (s >> 30)
# so NumPy, PyTorch (CPU/GPU) and Triton give bit-identical signatures. The reference below
# uses Python integers: it is the definition.
from __future__ import annotations

import numpy as np
import torch

from ._device import resolve_device
from .hashing import hash_tokens, to_u32

P61 = (1 << 61) - 1
M32 = (1 << 32) - 1
EMPTY = M32  # signature value of an empty set (no hash value equals it)

try:  # Triton is optional: the CUDA path needs it, the CPU path does not.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False


def permutations(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seeded universal-hash parameters ``(a, b)``, int64 arrays of length ``num_perm``."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    a = rng.integers(1, P61, size=num_perm, dtype=np.int64)
    b = rng.integers(0, P61, size=num_perm, dtype=np.int64)
    return a, b


# ----------------------------------------------------------------------------- PyTorch path
def _fold61(v):
    return (v & P61) + (v >> 61)


def _hash_torch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h(x) for x (n, 1) int64 < 2**32 and a, b (1, h) int64 -> (n, h) int64 in [0, M32)."""
    a_lo = a & ((1 << 31) - 1)
    a_hi = a >> 31
    r_lo = _fold61(a_lo * x)  # (n, h)
    s = _fold61(a_hi * x)
    r_hi = ((s & ((1 << 30) - 1)) << 31) + (s >> 30)
    v = _fold61(_fold61(r_lo + r_hi + b))
    v = torch.where(v >= P61, v - P61, v)
    w = (v & M32) + (v >> 32)
    w = (w & M32) + (w >> 32)
    return torch.where(w >= M32, w - M32, w)


def _minhash_torch(values: torch.Tensor, offsets: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   chunk_elems: int = 1 << 22) -> torch.Tensor:
    """values (nnz,) int64, offsets (n_sets + 1,) int64 -> (n_sets, num_perm) int64."""
    n_sets = offsets.numel() - 1
    num_perm = a.numel()
    out = torch.full((n_sets, num_perm), EMPTY, dtype=torch.int64, device=values.device)
    nnz = values.numel()
    if nnz == 0 or n_sets == 0:
        return out
    lengths = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(n_sets, device=values.device), lengths)
    a2, b2 = a.view(1, -1), b.view(1, -1)
    step = max(1, chunk_elems // max(num_perm, 1))
    for lo in range(0, nnz, step):
        hi = min(nnz, lo + step)
        h = _hash_torch(values[lo:hi].view(-1, 1), a2, b2)  # (chunk, num_perm)
        idx = seg[lo:hi].view(-1, 1).expand(-1, num_perm)
        out.scatter_reduce_(0, idx, h, reduce="amin", include_self=True)
    return out


# ----------------------------------------------------------------------------- NumPy reference
def minhash_reference(values: np.ndarray, offsets: np.ndarray, num_perm: int = 128,
                      seed: int = 0) -> np.ndarray:
    """The definition, with Python integers: ``((a*x + b) % p) % M`` minimized per set."""
    a, b = permutations(num_perm, seed)
    a = [int(v) for v in a]
    b = [int(v) for v in b]
    n_sets = len(offsets) - 1
    out = np.full((n_sets, num_perm), EMPTY, dtype=np.uint32)
    for s in range(n_sets):
        xs = [int(v) for v in values[offsets[s]:offsets[s + 1]]]
        for i in range(num_perm):
            if xs:
                out[s, i] = min(((a[i] * x + b[i]) % P61) % M32 for x in xs)
    return out


# ----------------------------------------------------------------------------- dispatch
def _check_csr(values, offsets):
    values = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != values.size or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must start at 0, be non-decreasing and end at len(values)")
    if values.size and (values.min() < 0 or values.max() > M32):
        raise ValueError("MinHash elements must be 32-bit (hash tokens with kernels.hashing first)")
    return values, offsets


def minhash_csr(values, offsets, num_perm: int = 128, seed: int = 0,
                device: str = "auto") -> np.ndarray:
    """Signatures ``(n_sets, num_perm)`` uint32 of the sets ``values[offsets[s]:offsets[s+1]]``."""
    values, offsets = _check_csr(values, offsets)
    dev = resolve_device(device)
    a, b = permutations(num_perm, seed)
    if dev == "cuda" and _HAVE_TRITON and _minhash_triton is not None:
        out = _minhash_triton(torch.from_numpy(values).cuda(), torch.from_numpy(offsets).cuda(),
                              torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
    else:
        t = torch.device(dev)
        out = _minhash_torch(torch.from_numpy(values).to(t), torch.from_numpy(offsets).to(t),
                             torch.from_numpy(a).to(t), torch.from_numpy(b).to(t))
    return out.cpu().numpy().astype(np.uint32)


_minhash_triton = None  # the Triton kernel lands with the "Kernels" issue


def tokens_to_csr(sets, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A sequence of iterables of str / bytes / int -> CSR ``(values, offsets)`` of 32-bit hashes."""
    lengths = []
    flat: list = []
    for s in sets:
        items = list(s)
        lengths.append(len(items))
        flat.extend(items)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not flat:
        return np.zeros(0, dtype=np.int64), offsets
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in flat[:1]) and \
            all(isinstance(v, (int, np.integer)) for v in flat):
        h = hash_tokens(np.asarray(flat, dtype=np.int64), seed)
    else:
        h = hash_tokens(arr, seed)
    return to_u32(h), offsets


def minhash(sets, num_perm: int = 128, seed: int = 0, device: str = "auto") -> np.ndarray:
    """MinHash signatures of many sets at once: ``(len(sets), num_perm)`` uint32.

    ``sets`` is a sequence of iterables of str, bytes or ints (the counterpart of
    ``datasketch.MinHash.bulk``). An empty set's signature is all ``EMPTY`` (= 2**32 - 1).
    """
    values, offsets = tokens_to_csr(sets, seed)
    return minhash_csr(values, offsets, num_perm=num_perm, seed=seed, device=device)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard between signatures (broadcast over leading axes); 0 if either is empty."""
    sig_a = np.asarray(sig_a)
    sig_b = np.asarray(sig_b)
    eq = (sig_a == sig_b).mean(axis=-1)
    empty = (sig_a[..., 0] == EMPTY) | (sig_b[..., 0] == EMPTY)
    return np.where(empty, 0.0, eq)


def cardinality(sig: np.ndarray) -> np.ndarray:
    """Estimated set size from a signature (datasketch's ``count``): k / sum(sig / M) - 1."""
    sig = np.asarray(sig, dtype=np.float64)
    k = sig.shape[-1]
    est = k / np.maximum((sig / M32).sum(axis=-1), 1e-12) - 1.0
    return np.where(sig[..., 0] == EMPTY, 0.0, np.maximum(est, 1.0))


def containment(sig_t: np.ndarray, sig_s: np.ndarray) -> np.ndarray:
    """Estimated containment |T n S| / |T| of target T in source S (the LSH Ensemble view)."""
    j = jaccard(sig_t, sig_s)
    nt = cardinality(sig_t)
    ns = cardinality(sig_s)
    inter = j * (nt + ns) / (1.0 + j)
    return np.where(nt > 0, np.clip(inter / np.maximum(nt, 1e-12), 0.0, 1.0), 0.0)
