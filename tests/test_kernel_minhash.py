"""MinHash kernel: Triton (interpreted on CPU), PyTorch (eager and compiled), the compiled C kernel
and dispatch against the reference, for both hash families (ms64, mod61). Signatures are
integers: every path must be *equal* to the reference."""
import numpy as np
import pytest
import torch

from fitsketch.kernels import _device, minhash
from fitsketch.kernels.minhash import EMPTY, FAMILIES, M32, minhash_reference, permutations

SIZES = [0, 1, 7, 97]  # number of sets; the larger odd size is in each test
needs_c = pytest.mark.skipif(minhash._c is None, reason="the C kernel was not built (no compiler at install)")


def _csr(rng, n_sets, max_len=40, p_empty=0.15):
    """Ragged CSR of 32-bit elements with some empty sets (always the first, if any)."""
    lengths = rng.integers(1, max_len + 1, size=n_sets)
    lengths[rng.random(n_sets) < p_empty] = 0
    if n_sets:
        lengths[0] = 0
    offsets = np.zeros(n_sets + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = rng.integers(0, M32 + 1, size=int(offsets[-1]), dtype=np.int64)
    if values.size >= 3:  # the edges of the element domain
        values[:3] = [0, M32, M32 - 1]
    return values, offsets


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def _triton(values, offsets, num_perm, seed, family="mod61"):
    a, b = minhash._params(num_perm, seed, family)
    return minhash._minhash_triton(_t(values), _t(offsets), _t(a), _t(b), family=family).numpy()


def _torch(values, offsets, num_perm, seed, family="mod61", **kw):
    a, b = minhash._params(num_perm, seed, family)
    return minhash._minhash_torch(_t(values), _t(offsets), _t(a), _t(b), family=family, **kw).numpy()


def _c(values, offsets, num_perm, seed, family="ms64"):
    assert family == "ms64"
    a, b = minhash.multiply_shift_params(num_perm, seed)
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    minhash._c.ms_csr(np.asarray(values, dtype=np.uint32), np.asarray(offsets, dtype=np.int64), a, b, out)
    return out.astype(np.int64)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_sets,num_perm", [(n, 128) for n in SIZES] + [(7, 37), (131, 37)])
def test_triton_equals_reference(rng, n_sets, num_perm, family):
    values, offsets = _csr(rng, n_sets, max_len=40 if n_sets < 100 else 12)
    seed = int(rng.integers(1 << 31))
    ref = minhash_reference(values, offsets, num_perm, seed, family=family)
    got = _triton(values, offsets, num_perm, seed, family)
    assert got.dtype == np.int64 and got.shape == (n_sets, num_perm)
    np.testing.assert_array_equal(got, ref.astype(np.int64))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_sets", SIZES + [1001])
def test_torch_equals_reference(rng, n_sets, family):
    num_perm = 64 if n_sets < 1000 else 16
    values, offsets = _csr(rng, n_sets)
    seed = int(rng.integers(1 << 31))
    ref = minhash_reference(values, offsets, num_perm, seed, family=family).astype(np.int64)
    np.testing.assert_array_equal(_torch(values, offsets, num_perm, seed, family), ref)
    # tiny blocks: many groups, sets cut along their length, single-row groups
    np.testing.assert_array_equal(_torch(values, offsets, num_perm, seed, family, block=3 * num_perm), ref)


@needs_c
@pytest.mark.parametrize("n_sets,num_perm", [(n, 128) for n in SIZES] + [(7, 37), (97, 8), (97, 1), (1001, 13)])
def test_c_kernel_equals_reference(rng, n_sets, num_perm):
    """The compiled kernel: 8-permutation AVX2 blocks, the scalar tail (num_perm % 8) and odd set
    lengths (the two-token loop's last element)."""
    values, offsets = _csr(rng, n_sets, max_len=40 if n_sets < 1000 else 9)
    seed = int(rng.integers(1 << 31))
    ref = minhash_reference(values, offsets, num_perm, seed, family="ms64").astype(np.int64)
    np.testing.assert_array_equal(_c(values, offsets, num_perm, seed), ref)
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, num_perm, seed, device="cpu"), ref)


@needs_c
def test_c_kernel_refuses_bad_buffers():
    a, b = minhash.multiply_shift_params(4, 0)
    out = np.empty((1, 4), dtype=np.uint32)
    with pytest.raises(ValueError, match="offsets"):   # past the end of values
        minhash._c.ms_csr(np.zeros(2, np.uint32), np.array([0, 3], np.int64), a, b, out)
    with pytest.raises(ValueError, match="out"):       # out of the wrong size
        minhash._c.ms_csr(np.zeros(2, np.uint32), np.array([0, 2], np.int64), a, b, np.empty(3, np.uint32))
    with pytest.raises(ValueError, match="same length"):
        minhash._c.ms_csr(np.zeros(2, np.uint32), np.array([0, 2], np.int64), a, b[:3], out)


def test_torch_compiled_equals_reference(rng, monkeypatch):
    """The torch.compile'd CPU block (mod61, used for large inputs) gives the same signatures."""
    monkeypatch.setenv("FITSKETCH_COMPILE", "1")
    monkeypatch.setattr(minhash, "_compiled", None)
    values, offsets = _csr(rng, 97, max_len=300)
    ref = minhash_reference(values, offsets, 32, 5, family="mod61").astype(np.uint32)
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 32, 5, device="cpu", family="mod61"), ref)
    assert minhash._compiled, "torch.compile was requested but the compiled path did not run"


def test_all_paths_agree_on_hash_values(rng):
    """Single-element sets expose h(x) itself for many x, including the domain edges."""
    x = np.concatenate([[0, 1, M32 - 1, M32], rng.integers(0, M32 + 1, size=200)])
    offsets = np.arange(len(x) + 1, dtype=np.int64)
    seed = int(rng.integers(1 << 31))
    a, b = permutations(16, seed)
    ref = np.array([[((int(ai) * int(v) + int(bi)) % minhash.P61) % M32 for ai, bi in zip(a, b)]
                    for v in x], dtype=np.int64)
    np.testing.assert_array_equal(_triton(x, offsets, 16, seed), ref)
    np.testing.assert_array_equal(_torch(x, offsets, 16, seed), ref)
    assert (ref < M32).all()  # no hash value equals EMPTY
    # ms64, written out with Python integers here (not through minhash_reference)
    a, b = minhash.multiply_shift_params(16, seed)
    assert a.dtype == np.uint64 and len(set(a.tolist())) == 16
    ref = np.array([[min(((int(ai) * int(v) + int(bi)) % (1 << 64)) >> 32, M32 - 1) for ai, bi in zip(a, b)]
                    for v in x], dtype=np.int64)
    for run in [_triton, _torch] + ([_c] if minhash._c is not None else []):
        np.testing.assert_array_equal(run(x, offsets, 16, seed, "ms64"), ref)


def test_ms64_clamps_the_top_value_below_empty():
    """An element whose hash is 2**32 - 1 gets M32 - 1, never EMPTY: with a = 0 the hash is
    b >> 32, so b = 2**64 - 1 makes it the top value on every path."""
    a = np.zeros(3, dtype=np.uint64)
    b = np.full(3, (1 << 64) - 1, dtype=np.uint64)
    values, offsets = np.array([5, 7], dtype=np.int64), np.array([0, 1, 1, 2], dtype=np.int64)
    expect = np.array([[M32 - 1] * 3, [EMPTY] * 3, [M32 - 1] * 3], dtype=np.int64)
    got_tr = minhash._minhash_triton(_t(values), _t(offsets), _t(a.view(np.int64)), _t(b.view(np.int64)), family="ms64")
    got_to = minhash._minhash_torch(_t(values), _t(offsets), _t(a.view(np.int64)), _t(b.view(np.int64)), family="ms64")
    np.testing.assert_array_equal(got_tr.numpy(), expect)
    np.testing.assert_array_equal(got_to.numpy(), expect)
    if minhash._c is not None:
        out = np.empty((3, 3), dtype=np.uint32)
        minhash._c.ms_csr(values.astype(np.uint32), offsets, a, b, out)
        np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", ["triton", "torch", "c"])
def test_merge_law(rng, path, family):
    """sig(A u B) == min(sig(A), sig(B)) exactly, also when one side is empty."""
    if path == "c" and (family != "ms64" or minhash._c is None):
        pytest.skip("the C kernel runs ms64 only, when built")
    run = {"triton": _triton, "torch": _torch, "c": _c}[path]
    for len_a, len_b in [(30, 50), (0, 20), (1, 1)]:
        a_vals = rng.integers(0, M32 + 1, size=len_a)
        b_vals = rng.integers(0, M32 + 1, size=len_b)
        values = np.concatenate([a_vals, b_vals, a_vals, b_vals])
        offsets = np.array([0, len_a, len_a + len_b, 2 * (len_a + len_b)], dtype=np.int64)
        sig = run(values, offsets, 64, 11, family)
        np.testing.assert_array_equal(sig[2], np.minimum(sig[0], sig[1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_jaccard_estimate_within_statistical_bound(rng, family):
    """Estimated Jaccard of random pairs lies within 5 standard errors (sqrt(J(1-J)/k)) of the
    exact Jaccard; the chance of a false failure is below 1e-5 per pair."""
    k = 256
    sets = []
    exact = []
    for _ in range(12):
        n_shared, n_a, n_b = (int(v) for v in rng.integers(0, 300, size=3))
        pool = rng.choice(1 << 32, size=n_shared + n_a + n_b + 1, replace=False)
        shared, only_a, only_b = pool[:n_shared], pool[n_shared:n_shared + n_a], pool[n_shared + n_a:-1]
        a = np.concatenate([shared, only_a, pool[-1:]])
        b = np.concatenate([shared, only_b, pool[-1:]])
        sets += [a, b]
        exact.append((n_shared + 1) / (n_shared + n_a + n_b + 1))
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sets], out=offsets[1:])
    sig = minhash.minhash_csr(np.concatenate(sets), offsets, num_perm=k, seed=3, device="cpu", family=family)
    est = minhash.jaccard(sig[0::2], sig[1::2])
    exact = np.array(exact)
    bound = 5 * np.sqrt(exact * (1 - exact) / k) + 1.0 / k
    assert np.all(np.abs(est - exact) <= bound), (est, exact)


@pytest.mark.parametrize("family", FAMILIES)
def test_minhash_of_tokens_and_empty_set(rng, family):
    words = [f"w{i}" for i in rng.integers(0, 500, size=300)]
    sets = [words[:120], [], words[100:], ["only"], [b"w1", "w1"]]
    sig = minhash.minhash(sets, num_perm=32, seed=9, device="cpu", family=family)
    values, offsets = minhash.tokens_to_csr(sets, seed=9)
    np.testing.assert_array_equal(sig, minhash_reference(values, offsets, 32, 9, family=family))
    assert sig.dtype == np.uint32 and (sig[1] == EMPTY).all()
    assert len(set(sig[4].tolist())) == len(sig[4])  # b"w1" and "w1" hash alike: one element
    assert minhash.jaccard(sig[1], sig[0]) == 0.0


def _random_token(rng):
    """A str of 0-40 code points from ASCII, Latin-1, CJK and astral planes (UTF-8 of 1-4 bytes),
    or its bytes; lengths cross SipHash's 8-byte blocks."""
    n = int(rng.integers(0, 41))
    pools = [(32, 127), (160, 256), (0x4E00, 0x9FFF), (0x1F600, 0x1F64F)]
    lo, hi = pools[int(rng.integers(len(pools)))] if rng.random() < 0.5 else pools[0]
    s = "".join(chr(int(c)) for c in rng.integers(lo, hi, size=n))
    return s.encode("utf-8") if rng.random() < 0.2 else s


@needs_c
@pytest.mark.parametrize("n_sets", SIZES + [301])
def test_c_tokens_equal_hash_tokens_path(rng, n_sets):
    """Sets of str / bytes signed in one compiled pass equal tokens_to_csr (pandas' SipHash) then
    the reference; the same token objects recur across sets (the per-call object cache), sets come
    as lists, tuples and generators."""
    vocab = [_random_token(rng) for _ in range(200)]
    sets = []
    for i in range(n_sets):
        toks = [vocab[j] for j in rng.integers(0, len(vocab), size=int(rng.integers(0, 30)))]
        toks += [_random_token(rng) for _ in range(int(rng.integers(0, 5)))]  # fresh objects too
        sets.append(toks if i % 3 else tuple(toks))
    seed = int(rng.integers(1 << 31))
    values, offsets = minhash.tokens_to_csr(sets, seed=seed)
    ref = minhash_reference(values, offsets, 24, seed, family="ms64")
    np.testing.assert_array_equal(minhash.minhash(sets, 24, seed, device="cpu"), ref)
    np.testing.assert_array_equal(minhash.minhash((iter(s) for s in sets), 24, seed, device="cpu"), ref)


@needs_c
def test_c_tokens_fall_back_on_other_tokens(rng):
    """Ints, mixed types and a str without UTF-8 form (a lone surrogate) go the general path."""
    for sets in ([[1, 2, 3], [4]], [["a", 1], ["b"]], [["ok"], ["\ud800"]]):
        try:
            values, offsets = minhash.tokens_to_csr(sets, seed=2)
        except Exception as e:  # the general path's own error: the C path must raise the same way
            with pytest.raises(type(e)):
                minhash.minhash(sets, 16, 2, device="cpu")
            continue
        np.testing.assert_array_equal(minhash.minhash(sets, 16, 2, device="cpu"),
                                      minhash_reference(values, offsets, 16, 2, family="ms64"))


def test_families_differ_and_unknown_family_is_refused(rng):
    values, offsets = _csr(rng, 7)
    a = minhash.minhash_csr(values, offsets, 16, 1, device="cpu", family="ms64")
    b = minhash.minhash_csr(values, offsets, 16, 1, device="cpu", family="mod61")
    assert (a[offsets[1:] > offsets[:-1]] != b[offsets[1:] > offsets[:-1]]).any()
    with pytest.raises(ValueError, match="family"):
        minhash.minhash_csr(values, offsets, 16, 1, device="cpu", family="sha1")


def test_bad_csr_is_refused():
    with pytest.raises(ValueError, match="offsets"):
        minhash.minhash_csr(np.arange(3), np.array([0, 2]), device="cpu")
    with pytest.raises(ValueError, match="32-bit"):
        minhash.minhash_csr(np.array([1 << 40]), np.array([0, 1]), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_raises():
    with pytest.raises(_device.DeviceError, match="cuda"):
        minhash.minhash_csr(np.arange(3), np.array([0, 3]), device="cuda")


def test_env_forces_cpu_for_auto(rng, monkeypatch):
    monkeypatch.setattr(_device, "cuda_available", lambda: True)  # "auto" would pick CUDA ...
    monkeypatch.setenv("FITSKETCH_DEVICE", "cpu")                  # ... but the variable forces CPU

    def no_triton(*args):
        raise AssertionError("the Triton path ran although FITSKETCH_DEVICE=cpu")

    monkeypatch.setattr(minhash, "_minhash_triton", no_triton)
    values, offsets = _csr(rng, 7)
    for family in FAMILIES:
        np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 16, 1, device="auto", family=family),
                                      minhash_reference(values, offsets, 16, 1, family=family))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_sets", SIZES + [1001])
def test_cuda_equals_reference(rng, n_sets, family):
    values, offsets = _csr(rng, n_sets)
    ref = minhash_reference(values, offsets, 32, 4, family=family)
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 32, 4, device="cuda", family=family), ref)
    a, b = minhash._params(32, 4, family)
    got = minhash._minhash_torch(*(_t(v).cuda() for v in (values, offsets, a, b)), family=family)
    np.testing.assert_array_equal(got.cpu().numpy(), ref.astype(np.int64))


@needs_c
def test_c_tokens_cache_over_many_sets_equals_reference(rng):
    """The per-call token cache over enough sets that it warms up, stays on (shared vocabulary
    objects recur) or turns itself off (every token a new object): the same signatures as
    tokens_to_csr then the reference, whichever happens."""
    vocab = [f"w{int(v)}-{i}" for i, v in enumerate(rng.integers(0, 1 << 40, size=3001))]
    shared = [[vocab[j] for j in rng.integers(0, len(vocab), size=int(rng.integers(0, 1300)))] for _ in range(97)]
    fresh = [[w[:-1] + w[-1] for w in s] for s in shared]   # same strings, new objects
    seed = int(rng.integers(1 << 31))
    values, offsets = minhash.tokens_to_csr(shared, seed=seed)
    ref = minhash_reference(values, offsets, 3, seed, family="ms64")
    np.testing.assert_array_equal(minhash.minhash(shared, 3, seed, device="cpu"), ref)
    np.testing.assert_array_equal(minhash.minhash(fresh, 3, seed, device="cpu"), ref)
    mixed = [s if i % 2 else f for i, (s, f) in enumerate(zip(shared, fresh))]
    np.testing.assert_array_equal(minhash.minhash(mixed, 3, seed, device="cpu"), ref)


@needs_c
def test_c_tokens_of_generators_that_free_their_tokens(rng):
    """Sets given as generators of new strings: each set's tokens die with it and the next set's
    new strings can take their addresses. A cache keyed by address must not give a dead token's
    element to the new string living there."""
    rows = [[int(v) for v in rng.integers(0, 1 << 30, size=int(rng.integers(0, 60)))] for _ in range(301)]
    seed = int(rng.integers(1 << 31))
    values, offsets = minhash.tokens_to_csr([[f"t{v}" for v in r] for r in rows], seed=seed)
    ref = minhash_reference(values, offsets, 5, seed, family="ms64")
    a, b = minhash.multiply_shift_params(5, seed)
    sig = np.empty((len(rows), 5), dtype=np.uint32)   # the kernel itself (minhash() makes lists first)
    assert minhash._c.ms_tokens([(f"t{v}" for v in r) for r in rows], minhash._hash_key(seed).encode("ascii"),
                                a, b, sig)
    np.testing.assert_array_equal(sig, ref)


@needs_c
def test_c_tokens_when_a_generator_empties_the_list_of_sets(rng):
    """A set given as a generator runs Python code inside the kernel; when that code empties the
    caller's list of sets, the kernel still signs the sets the list held when it was called."""
    seed = int(rng.integers(1 << 31))
    expect = [["x", "y"], ["a"], [f"z{int(v)}" for v in rng.integers(0, 1000, size=5)]]
    outer = []

    def gen():
        outer.clear()
        yield "a"

    outer.extend([expect[0], gen(), expect[2]])
    values, offsets = minhash.tokens_to_csr(expect, seed=seed)
    a, b = minhash.multiply_shift_params(7, seed)
    sig = np.empty((3, 7), dtype=np.uint32)
    assert minhash._c.ms_tokens(outer, minhash._hash_key(seed).encode("ascii"), a, b, sig)
    np.testing.assert_array_equal(sig, minhash_reference(values, offsets, 7, seed, family="ms64"))


@needs_c
def test_c_tokens_table_kept_between_calls_never_gives_an_old_element(rng):
    """The token table outlives a call (slots tagged with the call's epoch, cleared every 127
    calls): 300 calls, each on new str objects freed after it, whose addresses the next call's
    new strings of other contents take; every call must equal tokens_to_csr then the reference."""
    seed = int(rng.integers(1 << 31))
    a, b = minhash.multiply_shift_params(3, seed)
    key = minhash._hash_key(seed).encode("ascii")
    for call in range(300):
        n_sets = int(rng.integers(0, 6))
        sets = [[f"c{int(v)}" for v in rng.integers(0, 1 << 40, size=int(rng.integers(0, 12)))] for _ in range(n_sets)]
        if sets and sets[0]:
            sets.append(list(sets[0]))   # the same objects again within the call: table hits
        values, offsets = minhash.tokens_to_csr(sets, seed=seed)
        sig = np.empty((len(sets), 3), dtype=np.uint32)
        assert minhash._c.ms_tokens(sets, key, a, b, sig)
        np.testing.assert_array_equal(sig, minhash_reference(values, offsets, 3, seed, family="ms64"))
        del sets


@needs_c
def test_c_tokens_reentrant_call_from_a_generator(rng):
    """A set given as a generator that signs other sets itself (a call inside the call while the
    outer one holds the shared table): both calls equal the reference."""
    seed = int(rng.integers(1 << 31))
    vocab = [f"v{int(v)}" for v in rng.integers(0, 1 << 40, size=50)]
    outer_sets = [[vocab[j] for j in rng.integers(0, 50, size=int(rng.integers(1, 30)))] for _ in range(4)]
    inner_sets = [[vocab[j] for j in rng.integers(0, 50, size=int(rng.integers(1, 30)))] for _ in range(3)]
    inner = {}

    def gen():
        inner["sig"] = minhash.minhash(inner_sets, 6, seed, device="cpu")
        yield from outer_sets[1]

    values, offsets = minhash.tokens_to_csr(outer_sets, seed=seed)
    a, b = minhash.multiply_shift_params(6, seed)
    sig = np.empty((4, 6), dtype=np.uint32)
    assert minhash._c.ms_tokens([outer_sets[0], gen(), outer_sets[2], outer_sets[3]],
                                minhash._hash_key(seed).encode("ascii"), a, b, sig)
    np.testing.assert_array_equal(sig, minhash_reference(values, offsets, 6, seed, family="ms64"))
    iv, io = minhash.tokens_to_csr(inner_sets, seed=seed)
    np.testing.assert_array_equal(inner["sig"], minhash_reference(iv, io, 6, seed, family="ms64"))
