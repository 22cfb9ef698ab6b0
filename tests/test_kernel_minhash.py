"""MinHash kernel: Triton (interpreted on CPU), PyTorch (eager and compiled) and dispatch against
the reference. Signatures are integers: every path must be *equal* to the reference."""
import numpy as np
import pytest
import torch

from fitsketch.kernels import _device, minhash
from fitsketch.kernels.minhash import EMPTY, M32, minhash_reference, permutations

SIZES = [0, 1, 7, 97]  # number of sets; the larger odd size is in each test


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


def _triton(values, offsets, num_perm, seed):
    a, b = permutations(num_perm, seed)
    return minhash._minhash_triton(_t(values), _t(offsets), _t(a), _t(b)).numpy()


def _torch(values, offsets, num_perm, seed, **kw):
    a, b = permutations(num_perm, seed)
    return minhash._minhash_torch(_t(values), _t(offsets), _t(a), _t(b), **kw).numpy()


@pytest.mark.parametrize("n_sets,num_perm", [(n, 128) for n in SIZES] + [(7, 37), (131, 37)])
def test_triton_equals_reference(rng, n_sets, num_perm):
    values, offsets = _csr(rng, n_sets, max_len=40 if n_sets < 100 else 12)
    seed = int(rng.integers(1 << 31))
    ref = minhash_reference(values, offsets, num_perm, seed)
    got = _triton(values, offsets, num_perm, seed)
    assert got.dtype == np.int64 and got.shape == (n_sets, num_perm)
    np.testing.assert_array_equal(got, ref.astype(np.int64))


@pytest.mark.parametrize("n_sets", SIZES + [1001])
def test_torch_equals_reference(rng, n_sets):
    num_perm = 64 if n_sets < 1000 else 16
    values, offsets = _csr(rng, n_sets)
    seed = int(rng.integers(1 << 31))
    ref = minhash_reference(values, offsets, num_perm, seed).astype(np.int64)
    np.testing.assert_array_equal(_torch(values, offsets, num_perm, seed), ref)
    # tiny blocks: many groups, sets cut along their length, single-row groups
    np.testing.assert_array_equal(_torch(values, offsets, num_perm, seed, block=3 * num_perm), ref)


def test_torch_compiled_equals_reference(rng, monkeypatch):
    """The torch.compile'd CPU block (used for large inputs) gives the same signatures."""
    monkeypatch.setenv("FITSKETCH_COMPILE", "1")
    monkeypatch.setattr(minhash, "_compiled", None)
    values, offsets = _csr(rng, 97, max_len=300)
    ref = minhash_reference(values, offsets, 32, 5).astype(np.uint32)
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 32, 5, device="cpu"), ref)
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


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_merge_law(rng, path):
    """sig(A u B) == min(sig(A), sig(B)) exactly, also when one side is empty."""
    run = _triton if path == "triton" else _torch
    for len_a, len_b in [(30, 50), (0, 20), (1, 1)]:
        a_vals = rng.integers(0, M32 + 1, size=len_a)
        b_vals = rng.integers(0, M32 + 1, size=len_b)
        values = np.concatenate([a_vals, b_vals, a_vals, b_vals])
        offsets = np.array([0, len_a, len_a + len_b, 2 * (len_a + len_b)], dtype=np.int64)
        sig = run(values, offsets, 64, 11)
        np.testing.assert_array_equal(sig[2], np.minimum(sig[0], sig[1]))


def test_jaccard_estimate_within_statistical_bound(rng):
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
    sig = minhash.minhash_csr(np.concatenate(sets), offsets, num_perm=k, seed=3, device="cpu")
    est = minhash.jaccard(sig[0::2], sig[1::2])
    exact = np.array(exact)
    bound = 5 * np.sqrt(exact * (1 - exact) / k) + 1.0 / k
    assert np.all(np.abs(est - exact) <= bound), (est, exact)


def test_minhash_of_tokens_and_empty_set(rng):
    words = [f"w{i}" for i in rng.integers(0, 500, size=300)]
    sets = [words[:120], [], words[100:], ["only"], [b"w1", "w1"]]
    sig = minhash.minhash(sets, num_perm=32, seed=9, device="cpu")
    values, offsets = minhash.tokens_to_csr(sets, seed=9)
    np.testing.assert_array_equal(sig, minhash_reference(values, offsets, 32, 9))
    assert sig.dtype == np.uint32 and (sig[1] == EMPTY).all()
    assert len(set(sig[4].tolist())) == len(sig[4])  # b"w1" and "w1" hash alike: one element
    assert minhash.jaccard(sig[1], sig[0]) == 0.0


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
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 16, 1, device="auto"),
                                  minhash_reference(values, offsets, 16, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n_sets", SIZES + [1001])
def test_cuda_equals_reference(rng, n_sets):
    values, offsets = _csr(rng, n_sets)
    ref = minhash_reference(values, offsets, 32, 4)
    np.testing.assert_array_equal(minhash.minhash_csr(values, offsets, 32, 4, device="cuda"), ref)
    a, b = permutations(32, 4)
    got = minhash._minhash_torch(*(_t(v).cuda() for v in (values, offsets, a, b)))
    np.testing.assert_array_equal(got.cpu().numpy(), ref.astype(np.int64))
