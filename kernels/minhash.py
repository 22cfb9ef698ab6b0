# MinHash over many sets at once (CSR form).
#
# Elements are 32-bit ints x in [0, 2**32) (tokens are first hashed by kernels.hashing). Two hash
# families, recorded per hub (SketchConfig.minhash_family; signatures of different families never
# compare). With M = 2**32 - 1:
#   "ms64" (multiply-shift, the default since hubs record a family): seeded a_i, b_i in [0, 2**64),
#     h_i(x) = min(((a_i * x + b_i) mod 2**64) >> 32, M - 1)                  in [0, M - 1]
#     Dietzfelbinger's multiply-add-shift, 2-independent (64 >= 32 + 32 - 1); wrapping uint64
#     arithmetic, so exact in NumPy, PyTorch and Triton alike (int64 wraps the same bits).
#   "mod61" (hubs created before the family was recorded): a_i in [1, p), b_i in [0, p),
#     p = 2**61 - 1 (Mersenne),
#     h_i(x) = ((a_i * x + b_i) mod p) mod M                                  in [0, M - 1]
# For both: sig[s, i] = min_{x in set s} h_i(x);   empty set -> EMPTY = M (never a hash value)
# Jaccard(A, B) ~ mean_i [sig_A[i] == sig_B[i]];  |A| ~ num_perm / sum_i(sig_A[i] / M) - 1.
# Signatures merge by element-wise min: sig(A u B) = min(sig(A), sig(B)).
#
# The mod61 fast paths compute h exactly in signed int64 without overflow, splitting
# a = a_hi * 2**31 + a_lo (a_lo < 2**31, a_hi < 2**30) and folding with 2**61 = 1 (mod p),
# fold(t) = (t & p) + (t >> 61):
#     fold(a_lo * x)                                  a_lo * x < 2**63          -> <= p + 3
#     (s * 2**31) mod p = ((s & (2**30-1)) << 31) + (s >> 30),  s = a_hi * x < 2**62  -> < 2**61 + 2**32
#     t = fold(a_lo * x) + that + b < 2**63;  v = fold(t) <= p + 3, minus p once if v >= p
#     w = (v & M) + (v >> 32) < M + 2**29, minus M once if w >= M
# so NumPy, PyTorch (CPU/GPU, eager or compiled) and Triton give bit-identical signatures. The
# reference below uses Python integers: it is the definition.
#
# Layouts: the Triton kernel runs one program per (set, block of permutations) and loops over
# the set's values in blocks, min-reducing in registers. On the CPU, ms64 runs in a C kernel
# compiled when fitsketch is installed (kernels/_cminhash.c: AVX2 when the CPU has it, nothing
# compiled inside a call; it also hashes str / bytes tokens itself, each distinct token object
# once). Without it (no C compiler at install), and for mod61, the PyTorch path sorts sets by length,
# pads each group of similar length to a rectangle by repeating the set's own elements (a
# duplicate never changes a min) and reduces (sets, length, perms) blocks with amin; on CPU the
# block function is compiled by torch.compile (one fused loop) for large inputs.
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ._device import resolve_device
from .hashing import _hash_key, hash_tokens, to_u32

log = logging.getLogger(__name__)

P61 = (1 << 61) - 1
M32 = (1 << 32) - 1
EMPTY = M32  # signature value of an empty set (no hash value equals it)
FAMILIES = ("ms64", "mod61")   # hash families: multiply-shift (default), the Mersenne one of old hubs
DEFAULT_FAMILY = "ms64"
LEGACY_FAMILY = "mod61"        # what a hub that recorded no family was built with

try:  # the compiled CPU kernel of ms64 (built by `pip install`; optional)
    from . import _cminhash as _c
except ImportError:  # pragma: no cover - no C compiler when installed
    _c = None

try:  # Triton is optional: the CUDA path needs it, the CPU path does not.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    _HAVE_TRITON = False


def permutations(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seeded mod61 parameters ``(a, b)``, int64 arrays of length ``num_perm``."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    a = rng.integers(1, P61, size=num_perm, dtype=np.int64)
    b = rng.integers(0, P61, size=num_perm, dtype=np.int64)
    return a, b


def multiply_shift_params(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seeded ms64 parameters ``(a, b)``, uint64 arrays of length ``num_perm``, uniform in
    [0, 2**64) (a separate stream from mod61's)."""
    rng = np.random.Generator(np.random.PCG64([int(seed), 0x6D73]))
    a = rng.integers(0, M32 * (M32 + 2), size=num_perm, dtype=np.uint64, endpoint=True)
    b = rng.integers(0, M32 * (M32 + 2), size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not a MinHash family: expected one of {FAMILIES}")
    return family


def _params(num_perm: int, seed: int, family: str) -> tuple[np.ndarray, np.ndarray]:
    """The family's parameters as int64 arrays (ms64's uint64 bits viewed as int64: same wrapping
    arithmetic in PyTorch and Triton)."""
    if family == "ms64":
        a, b = multiply_shift_params(num_perm, seed)
        return a.view(np.int64), b.view(np.int64)
    return permutations(num_perm, seed)


# ----------------------------------------------------------------------------- Triton kernel
if _HAVE_TRITON:

    @triton.jit
    def _minhash_kernel(
        values_ptr,   # [nnz] int64, elements < 2**32, sets back to back
        offsets_ptr,  # [n_sets + 1] int64, set s is values[offsets[s]:offsets[s+1]]
        a_ptr,        # [num_perm] int64 in [1, p)
        b_ptr,        # [num_perm] int64 in [0, p)
        out_ptr,      # [n_sets, num_perm] int64 signatures
        num_perm,
        BLOCK_V: tl.constexpr,  # values per step
        BLOCK_P: tl.constexpr,  # permutations per program
        MS64: tl.constexpr,     # True: family ms64 (a, b: the uint64 bits as int64), False: mod61
    ):
        s = tl.program_id(0).to(tl.int64)
        perm = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,)
        perm_ok = perm < num_perm
        a = tl.load(a_ptr + perm, mask=perm_ok, other=1)
        b = tl.load(b_ptr + perm, mask=perm_ok, other=0)
        a_lo = (a & 0x7FFFFFFF)[None, :]  # (1, BLOCK_P)
        a_hi = (a >> 31)[None, :]
        a2 = a[None, :]
        b = b[None, :]
        start = tl.load(offsets_ptr + s)
        end = tl.load(offsets_ptr + s + 1)
        acc = tl.full((BLOCK_P,), 4294967295, tl.int64)  # EMPTY
        for v0 in range(start, end, BLOCK_V):
            idx = v0 + tl.arange(0, BLOCK_V)
            ok = idx < end
            x = tl.load(values_ptr + idx, mask=ok, other=0)[:, None]  # (BLOCK_V, 1)
            if MS64:
                w = ((a2 * x + b) >> 32) & 4294967295                  # wraps mod 2**64
                w = tl.minimum(w, 4294967294)                          # (BLOCK_V, BLOCK_P)
            else:
                t = a_lo * x                                           # < 2**63
                t = (t & 2305843009213693951) + (t >> 61)
                sh = a_hi * x                                          # < 2**62
                t = t + ((sh & 1073741823) << 31) + (sh >> 30) + b     # < 2**63
                v = (t & 2305843009213693951) + (t >> 61)
                v = tl.where(v >= 2305843009213693951, v - 2305843009213693951, v)
                w = (v & 4294967295) + (v >> 32)
                w = tl.where(w >= 4294967295, w - 4294967295, w)       # (BLOCK_V, BLOCK_P)
            w = tl.where(ok[:, None], w, 4294967295)
            acc = tl.minimum(acc, tl.min(w, axis=0))
        tl.store(out_ptr + s * num_perm + perm, acc, mask=perm_ok)

    def _minhash_triton(values: torch.Tensor, offsets: torch.Tensor, a: torch.Tensor,
                        b: torch.Tensor, family: str = LEGACY_FAMILY) -> torch.Tensor:
        """values (nnz,) int64, offsets (n_sets + 1,) int64, a, b (num_perm,) int64 (``_params``)
        -> (n_sets, num_perm) int64 signatures, EMPTY for empty sets."""
        n_sets = offsets.numel() - 1
        num_perm = a.numel()
        out = torch.full((n_sets, num_perm), EMPTY, dtype=torch.int64, device=values.device)
        if n_sets == 0 or num_perm == 0:
            return out
        block_p = min(128, triton.next_power_of_2(num_perm))
        block_v = 32 if block_p >= 64 else 64
        grid = (n_sets, triton.cdiv(num_perm, block_p))
        _minhash_kernel[grid](values.contiguous(), offsets.contiguous(), a.contiguous(),
                              b.contiguous(), out, num_perm, BLOCK_V=block_v, BLOCK_P=block_p,
                              MS64=_check_family(family) == "ms64")
        return out
else:  # pragma: no cover
    _minhash_triton = None


# ----------------------------------------------------------------------------- PyTorch path
def _fold61(v):
    return (v & P61) + (v >> 61)


def _hash_torch(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h(x) for x int64 < 2**32 broadcast against a, b int64 (e.g. (n, 1) and (1, h)), in [0, M32)."""
    t = _fold61((a & ((1 << 31) - 1)) * x)
    s = (a >> 31) * x
    t = t + ((s & ((1 << 30) - 1)) << 31) + (s >> 30) + b
    v = _fold61(t)
    v = torch.where(v >= P61, v - P61, v)
    w = (v & M32) + (v >> 32)
    return torch.where(w >= M32, w - M32, w)


def _hash_torch_ms(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ms64's h(x) for x int64 < 2**32 broadcast against a, b int64 (uint64 bits), in [0, M32)."""
    return torch.clamp_max(((a * x + b) >> 32) & M32, M32 - 1)  # int64 wraps like uint64


def _block_min_ms(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``_block_min`` of the ms64 family (eager: no compile inside a call)."""
    return _hash_torch_ms(x.unsqueeze(-1), a, b).amin(dim=-2)


def _block_min(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B, W) int64, a, b (num_perm,) -> (B, num_perm) int64 = min over W of h(x).

    The gather that builds ``x`` stays outside: an indirect load inside the compiled loop keeps
    it from vectorizing (measured ~5x slower)."""
    return _hash_torch(x.unsqueeze(-1), a, b).amin(dim=-2)


_EAGER_BLOCK = 1 << 18      # hashes per eager block (its temporaries stay in cache)
_COMPILED_BLOCK = 1 << 22   # hashes per compiled block (one fused loop, nothing materialized)
_COMPILE_MIN_WORK = 1 << 27  # compile only when there are this many hashes to do (or once compiled)
_compiled = None  # torch.compile(_block_min), built on first large CPU call; False if it failed


def _compile_wanted(work: int, dev: torch.device) -> bool:
    """FITSKETCH_COMPILE=1 forces torch.compile for the CPU path, =0 forbids it; by default it is
    used for inputs large enough to repay the compile (seconds, cached on disk afterwards)."""
    if dev.type != "cpu" or _compiled is False:
        return False
    flag = os.environ.get("FITSKETCH_COMPILE", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    return _compiled is not None or work >= _COMPILE_MIN_WORK


def _get_block_fn(work: int, num_perm: int, dev: torch.device):
    """The block function and its block size in hashes: compiled when wanted and available."""
    global _compiled
    if _compile_wanted(work, dev):
        if _compiled is None:
            try:
                fn = torch.compile(_block_min, dynamic=True)
                args = (torch.arange(6, dtype=torch.int64).view(2, 3),
                        *(torch.from_numpy(v) for v in permutations(num_perm, 0)))
                if not torch.equal(fn(*args), _block_min(*args)):
                    raise RuntimeError("compiled MinHash block differs from the eager one")
                _compiled = fn
            except Exception as exc:  # no C++ compiler, unsupported platform, ...
                log.warning("torch.compile of the MinHash CPU path failed (%s); using the eager "
                            "PyTorch path (same results, slower); set FITSKETCH_COMPILE=0 to "
                            "silence this", exc)
                _compiled = False
        if _compiled:
            return _compiled, _COMPILED_BLOCK
    return _block_min, _EAGER_BLOCK


def _minhash_torch(values: torch.Tensor, offsets: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   block: int | None = None, block_fn=None, family: str = LEGACY_FAMILY) -> torch.Tensor:
    """values (nnz,) int64, offsets (n_sets + 1,) int64, a, b from ``_params``
    -> (n_sets, num_perm) int64.

    Sets are sorted by length and cut into groups whose lengths differ by at most 25%; a group is
    padded to a (B, L) rectangle by repeating each set's own elements (``j % len``), which leaves
    the min unchanged, and reduced ``block`` hashes at a time; longer sets are cut along L.
    """
    n_sets = offsets.numel() - 1
    num_perm = a.numel()
    dev = values.device
    out = torch.full((n_sets, num_perm), EMPTY, dtype=torch.int64, device=dev)
    if values.numel() == 0 or n_sets == 0 or num_perm == 0:
        return out
    if block_fn is None and _check_family(family) == "ms64":
        block_fn = _block_min_ms
    if block_fn is None:
        block_fn, default_block = _get_block_fn(values.numel() * num_perm, num_perm, dev)
        block = block or default_block
    block = block or _EAGER_BLOCK
    lengths = (offsets[1:] - offsets[:-1]).cpu()
    order = torch.argsort(lengths, stable=True)
    ls = lengths[order].numpy()
    starts_all = offsets[:-1]
    done_rows, done_sigs = [], []
    i = int(np.searchsorted(ls, 1))  # skip empty sets: they stay EMPTY
    while i < n_sets:
        l0 = int(ls[i])
        j = int(np.searchsorted(ls, l0 + l0 // 4, side="right"))  # lengths in [l0, 1.25 l0]
        lmax = int(ls[j - 1])
        rows = max(1, min(j - i, block // max(lmax * num_perm, 1)))
        lmax = int(ls[i + rows - 1])
        sel = order[i:i + rows]
        if rows == 1:  # keep every dim >= 2 (no 0/1 re-specialization when compiled)
            sel = torch.cat([sel, sel])
        sel = sel.to(dev)
        starts = starts_all[sel].view(-1, 1)  # (B, 1)
        lens = lengths[sel.cpu()].to(dev).view(-1, 1)  # (B, 1)
        width = max(2, min(lmax, block // (rows * num_perm)))
        acc = None
        for l_lo in range(0, lmax, width):
            cols = torch.arange(l_lo, l_lo + width, device=dev).view(1, -1)  # (1, W), wraps
            x = values[starts + cols % lens]  # (B, W): wraps within each set
            m = block_fn(x, a, b)  # (B, num_perm)
            acc = m if acc is None else torch.minimum(acc, m)
        done_rows.append(sel)
        done_sigs.append(acc)
        i += rows
    if done_rows:
        out[torch.cat(done_rows)] = torch.cat(done_sigs)
    return out


# ----------------------------------------------------------------------------- NumPy reference
def minhash_reference(values: np.ndarray, offsets: np.ndarray, num_perm: int = 128,
                      seed: int = 0, family: str = DEFAULT_FAMILY) -> np.ndarray:
    """The definition, with Python integers, minimized per set: ms64 ``min(((a*x + b) % 2**64)
    >> 32, M - 1)``, mod61 ``((a*x + b) % p) % M``."""
    if _check_family(family) == "ms64":
        a, b = multiply_shift_params(num_perm, seed)

        def h(ai, bi, x):
            return min(((ai * x + bi) % (1 << 64)) >> 32, M32 - 1)
    else:
        a, b = permutations(num_perm, seed)

        def h(ai, bi, x):
            return ((ai * x + bi) % P61) % M32
    a = [int(v) for v in a]
    b = [int(v) for v in b]
    n_sets = len(offsets) - 1
    out = np.full((n_sets, num_perm), EMPTY, dtype=np.uint32)
    for s in range(n_sets):
        xs = [int(v) for v in values[offsets[s]:offsets[s + 1]]]
        for i in range(num_perm):
            if xs:
                out[s, i] = min(h(a[i], b[i], x) for x in xs)
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


def _use_c(dev: str, family: str) -> bool:
    """The compiled kernel runs ms64 on the CPU (``FITSKETCH_CMINHASH=0`` forces PyTorch, for tests
    and comparisons)."""
    return (_c is not None and dev == "cpu" and family == "ms64"
            and os.environ.get("FITSKETCH_CMINHASH", "").strip().lower() not in ("0", "false", "no", "off"))


def minhash_csr(values, offsets, num_perm: int = 128, seed: int = 0,
                device: str = "auto", family: str = DEFAULT_FAMILY) -> np.ndarray:
    """Signatures ``(n_sets, num_perm)`` uint32 of the sets ``values[offsets[s]:offsets[s+1]]``.

    ``device="cuda"`` runs the Triton kernel, ``"cpu"`` the compiled kernel (ms64) or the PyTorch
    path; ``"auto"`` picks CUDA when present (``FITSKETCH_DEVICE`` forces either). ``family``: the
    hash family (``FAMILIES``; a hub passes its recorded one).
    """
    _check_family(family)
    values, offsets = _check_csr(values, offsets)
    dev = resolve_device(device)
    if _use_c(dev, family):
        a, b = multiply_shift_params(num_perm, seed)
        out = np.empty((offsets.size - 1, num_perm), dtype=np.uint32)
        _c.ms_csr(values.astype(np.uint32), offsets, a, b, out)
        return out
    a, b = _params(num_perm, seed, family)
    if dev == "cuda" and _minhash_triton is not None:
        out = _minhash_triton(torch.from_numpy(values).cuda(), torch.from_numpy(offsets).cuda(),
                              torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), family=family)
    else:
        t = torch.device(dev)
        out = _minhash_torch(torch.from_numpy(values).to(t), torch.from_numpy(offsets).to(t),
                             torch.from_numpy(a).to(t), torch.from_numpy(b).to(t), family=family)
    return out.cpu().numpy().astype(np.uint32)


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


def minhash(sets, num_perm: int = 128, seed: int = 0, device: str = "auto",
            family: str = DEFAULT_FAMILY) -> np.ndarray:
    """MinHash signatures of many sets at once: ``(len(sets), num_perm)`` uint32.

    ``sets`` is a sequence of iterables of str, bytes or ints (the counterpart of
    ``datasketch.MinHash.bulk``). An empty set's signature is all ``EMPTY`` (= 2**32 - 1).
    Equal to ``minhash_csr(*tokens_to_csr(sets, seed), ...)``; on the CPU with ms64, sets of str /
    bytes are hashed and signed in one compiled pass.
    """
    _check_family(family)
    if _use_c(resolve_device(device), family):
        sets = [s if isinstance(s, (list, tuple)) else list(s) for s in sets]
        a, b = multiply_shift_params(num_perm, seed)
        out = np.empty((len(sets), num_perm), dtype=np.uint32)
        if _c.ms_tokens(sets, _hash_key(seed).encode("ascii"), a, b, out):
            return out
    values, offsets = tokens_to_csr(sets, seed)
    return minhash_csr(values, offsets, num_perm=num_perm, seed=seed, device=device, family=family)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard between signatures (broadcast over leading axes); 0 if either is empty."""
    sig_a = np.asarray(sig_a)
    sig_b = np.asarray(sig_b)
    eq = (sig_a == sig_b).mean(axis=-1)
    empty = (sig_a[..., 0] == EMPTY) | (sig_b[..., 0] == EMPTY)
    return np.where(empty, 0.0, eq)


def cardinality(sig: np.ndarray) -> np.ndarray:
    """Estimated set size from a signature (datasketch's ``count``): k / sum(sig / M) - 1."""
    sig = np.asarray(sig)
    k = sig.shape[-1]
    flat = sig.reshape(-1, k)
    total = np.empty(flat.shape[0], dtype=np.float64)
    step = 1 << 14     # rows per float64 block: bounds memory on a hub-sized stack of signatures
    for lo in range(0, flat.shape[0], step):
        total[lo:lo + step] = (flat[lo:lo + step].astype(np.float64) / M32).sum(axis=-1)
    est = k / np.maximum(total.reshape(sig.shape[:-1]), 1e-12) - 1.0
    return np.where(sig[..., 0] == EMPTY, 0.0, np.maximum(est, 1.0))


def containment(sig_t: np.ndarray, sig_s: np.ndarray) -> np.ndarray:
    """Estimated containment |T n S| / |T| of target T in source S (the LSH Ensemble view)."""
    j = jaccard(sig_t, sig_s)
    nt = cardinality(sig_t)
    ns = cardinality(sig_s)
    inter = j * (nt + ns) / (1.0 + j)
    return np.where(nt > 0, np.clip(inter / np.maximum(nt, 1e-12), 0.0, 1.0), 0.0)
