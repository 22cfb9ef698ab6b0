# Deep hashing for nearest-neighbour search (Meta4: Shivaram et al., "An Evaluation of Deep
# Hashing for Nearest Neighbor Search on General Embedding Data").
#
# A small MLP maps a unit embedding x (d,) to c tanh outputs, h = tanh(W2 relu(W1 x + b1) + b2);
# the code is the sign pattern of h, c bits packed to c / 8 bytes (np.packbits order).
# Training (seeded, CPU, reproducible): triplets (anchor a, positive p, negative n), p drawn
# from a's label when labels are given, else from a's exact top-`n_pos` cosine neighbours
# (engine/exact.py); n drawn uniformly at random. With the normalized squared distance
#     dist(u, v) = |u - v|^2 / (4 c)      (= Hamming distance / c when u, v are in {-1, 1}^c)
# the loss per batch is
#     mean relu(dist(h_a, h_p) - dist(h_a, h_n) + margin)         triplet margin
#   + quant       * mean((|h| - 1)^2)                              push outputs to +-1
#   + balance     * mean_bits(mean_batch(h)^2)                     each bit half on, half off
#   + decorrelate * mean_{i != j} cov_batch(h_i, h_j)^2            bits carry different splits
# Balance and decorrelation at weight 1 (TRAINER 2) are what keep the codes from collapsing: at
# the old weights (balance 0.1, no decorrelation) 50 clusters of 50k x 128 fell into 74 buckets,
# the largest 9,915 vectors (ten clusters); with them, 201 buckets, the largest 1,060 (one).
# Search: codes and ids persist as a FAISS IndexBinaryIDMap2(IndexBinaryFlat) (incremental add /
# remove); in memory they are grouped by code into buckets (BucketTable, CSR). A query reads its
# own bucket, then every bucket at Hamming radius 1, 2, ... until its ball holds `candidates`
# vectors (or the radius cap); the read is capped at `candidates` (the bucket crossing it is cut),
# and the candidates are reranked by exact cosine in FAISS (knn_inner_products_by_idx, which reads
# the stored rows in place). Measured (bench/SUMMARY.md, k = 25, candidates = 1024, about one
# cluster): recall@25 0.998 at 9-15x the flat FAISS index's queries/s on 50k x 128 (50 clusters),
# 0.996 at 31x on 100k x 128 (100 clusters); at candidates = 512 recall falls to ~0.5 (within a
# cluster the hash has little to go on), so `candidates` should cover the groups the data forms.
# (FAISS's IndexBinaryHash does the same walk but keeps a k-heap per query and cannot remove ids;
# it was ~10 ms per query at 4096 candidates here, the CSR walk well under 1 ms.)
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import torch

from .exact import MISSING_D, MISSING_I, exact_search

log = logging.getLogger(__name__)

__all__ = ["DeepHashConfig", "DeepHashModel", "BucketTable", "train", "build_index", "search",
           "WEIGHTS_FORMAT", "TRAINER", "max_radius"]

WEIGHTS_FORMAT = 1          # version of the weights record (msgpack dict of arrays)
TRAINER = 2                 # version of the training recipe; records without "trainer" are 1
                            # (collapsing codes): the hub retrains those on first use
_ENUM_CAP = 1 << 16         # most buckets one query may enumerate: sum_{r <= R} C(c, r) <= this
_DENSE_BITS = 20            # codes up to this length use a direct-address bucket table


@dataclass(frozen=True)
class DeepHashConfig:
    bits: int = 16           # code length c: a multiple of 8 in [8, 64]; 2^c buckets
    hidden: int = 256        # width of the hidden layer (d -> hidden -> bits)
    epochs: int = 30         # passes over the training sample
    batch: int = 256         # triplets per step
    lr: float = 3e-3         # Adam learning rate
    margin: float = 0.25     # triplet margin in normalized Hamming units (share of the bits)
    quant: float = 0.1       # weight of the quantization penalty
    balance: float = 1.0     # weight of the bit-balance penalty
    decorrelate: float = 1.0  # weight of the bit-decorrelation penalty
    n_pos: int = 10          # positives among the exact top-n_pos neighbours (no labels)
    max_train: int = 10_000  # training sample size (seeded subsample of the stored vectors)

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 8 <= self.bits <= 64 and self.bits % 8 == 0):
            raise ValueError(f"bits={self.bits!r} is not valid: expected a multiple of 8 in [8, 64]")
        for name in ("hidden", "epochs", "batch", "n_pos", "max_train"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name}={v!r} is not valid: expected a positive integer")


@dataclass
class DeepHashModel:
    """Trained weights (float32 NumPy) and the numbers that say what they were trained on."""
    W1: np.ndarray           # (d, hidden)
    b1: np.ndarray           # (hidden,)
    W2: np.ndarray           # (hidden, bits)
    b2: np.ndarray           # (bits,)
    config: DeepHashConfig
    seed: int
    trained_n: int = 0       # vectors in the hub when trained
    trained_hwm: int = 0     # next sample id when trained: ids below it existed then
    generation: int = 0      # hub generation when trained
    trainer: int = TRAINER   # training recipe version (TRAINER)

    @property
    def dim(self) -> int:
        return self.W1.shape[0]

    @property
    def bits(self) -> int:
        return self.W2.shape[1]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed codes uint8 (n, bits / 8) of unit rows ``x`` (n, d); sign(tanh(z)) = sign(z)."""
        x = np.asarray(x, dtype=np.float32)
        h = np.maximum(x @ self.W1 + self.b1, 0) @ self.W2 + self.b2     # (n, bits)
        return np.packbits(h > 0, axis=1)                                  # (n, bits / 8)

    def to_record(self) -> dict:
        """msgpack-able record (arrays travel as the codec's ndarray extension; never pickle)."""
        return {"v": WEIGHTS_FORMAT, "W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2,
                "config": asdict(self.config), "seed": self.seed, "trained_n": self.trained_n,
                "trained_hwm": self.trained_hwm, "generation": self.generation, "trainer": self.trainer}

    @classmethod
    def from_record(cls, rec) -> "DeepHashModel":
        if not isinstance(rec, dict) or rec.get("v") != WEIGHTS_FORMAT:
            v = rec.get("v") if isinstance(rec, dict) else type(rec).__name__
            raise ValueError(f"deep-hash weights have format {v!r}; this fitsketch reads {WEIGHTS_FORMAT}")
        arrs = {k: np.asarray(rec[k], dtype=np.float32) for k in ("W1", "b1", "W2", "b2")}
        trainer = int(rec.get("trainer", 1))
        cfg = dict(rec["config"])
        if trainer < 2:          # trained before balance / decorrelation defaults of 1
            cfg.setdefault("decorrelate", 0.0)
        return cls(**arrs, config=DeepHashConfig(**cfg), seed=int(rec["seed"]),
                   trained_n=int(rec["trained_n"]), trained_hwm=int(rec["trained_hwm"]),
                   generation=int(rec["generation"]), trainer=trainer)


# ----------------------------------------------------------------------------- training
def _triplets(rng: np.random.Generator, n: int, pos_table, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of (anchor, positive, negative) row numbers, anchors a permutation of 0..n-1."""
    a = rng.permutation(n)
    if labels is not None:
        order, starts, counts, inv = pos_table                         # rows grouped by label
        g = inv[a]
        p = order[starts[g] + (rng.random(n) * counts[g]).astype(np.int64)]
    else:
        p = pos_table[a, rng.integers(0, pos_table.shape[1], size=n)]
    neg = rng.integers(0, n, size=n)
    return a, p, neg


def train(x: np.ndarray, labels=None, *, config: DeepHashConfig = DeepHashConfig(), seed: int = 0
          ) -> DeepHashModel:
    """Train the hashing MLP on unit rows ``x`` (n, d) float32, reproducibly for a given seed."""
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise ValueError("no vectors to train the deep hash on: store embeddings first")
    rng = np.random.default_rng([seed, 0xDEE9])
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels has shape {labels.shape}: expected ({n},), one per vector")
    if n > config.max_train:
        keep = np.sort(rng.choice(n, config.max_train, replace=False))
        x = x[keep]
        labels = None if labels is None else labels[keep]
        n = x.shape[0]
    if labels is not None:
        _, inv = np.unique(labels, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        counts = np.bincount(inv)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos_table = (order, starts, counts, inv)
    else:
        n_pos = min(config.n_pos, max(n - 1, 1))
        _, nn = exact_search(x, x, n_pos + 1, normalized=True)        # (n, n_pos + 1), self first
        pos_table = np.where(nn[:, 1:] >= 0, nn[:, 1:], nn[:, :1])     # (n, n_pos)
    xt = torch.from_numpy(x)
    threads = torch.get_num_threads()
    try:  # one thread: the MLP is small (threads only add contention) and results stay bit-stable
        torch.set_num_threads(1)
        return _fit(xt, rng, pos_table, labels, config, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(xt: torch.Tensor, rng, pos_table, labels, config: DeepHashConfig, seed: int) -> DeepHashModel:
    n, d = xt.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(d, config.hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(config.hidden, config.bits), torch.nn.Tanh())
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        c4 = 4.0 * config.bits
        for epoch in range(config.epochs):
            a, p, ng = (torch.from_numpy(v) for v in _triplets(rng, n, pos_table, labels))
            total = 0.0
            for lo in range(0, n, config.batch):
                sl = slice(lo, lo + config.batch)
                h = net(torch.cat([xt[a[sl]], xt[p[sl]], xt[ng[sl]]]))   # (3b, bits)
                ha, hp, hn = h.chunk(3)
                dap = (ha - hp).pow(2).sum(1) / c4
                dan = (ha - hn).pow(2).sum(1) / c4
                loss = (torch.relu(dap - dan + config.margin).mean()
                        + config.quant * (h.abs() - 1).pow(2).mean()
                        + config.balance * h.mean(0).pow(2).mean())
                if config.decorrelate:
                    loss = loss + config.decorrelate * _offdiag_cov(h)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * ha.shape[0]
            log.debug("deephash epoch %d: loss %.4f", epoch, total / n)
    lin1, lin2 = net[0], net[2]
    return DeepHashModel(W1=lin1.weight.detach().numpy().T.copy(), b1=lin1.bias.detach().numpy().copy(),
                         W2=lin2.weight.detach().numpy().T.copy(), b2=lin2.bias.detach().numpy().copy(),
                         config=config, seed=seed)


def _offdiag_cov(h: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal covariance of the bits over the batch (0: bits uncorrelated)."""
    c = h.shape[1]
    hc = h - h.mean(0)
    cov = hc.T @ hc / h.shape[0]
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / max(c * (c - 1), 1)


# ----------------------------------------------------------------------------- search
def build_index(model: DeepHashModel, x: np.ndarray, ids: np.ndarray) -> faiss.IndexBinaryIDMap2:
    """The persisted form: ``IndexBinaryIDMap2(IndexBinaryFlat)`` of the codes of unit rows ``x``
    under ``ids`` (FAISS's binary format; supports incremental ``add_with_ids`` / ``remove_ids``)."""
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(model.bits))
    if len(ids):
        add(index, model, x, ids)
    return index


def add(index, model: DeepHashModel, x: np.ndarray, ids: np.ndarray) -> None:
    """Encode unit rows ``x`` and add them under ``ids`` (int64)."""
    for lo in range(0, len(ids), 1 << 16):
        index.add_with_ids(model.encode(x[lo:lo + (1 << 16)]),
                           np.ascontiguousarray(ids[lo:lo + (1 << 16)], dtype=np.int64))


def _as_u64(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, nbytes <= 8) as one uint64 each, the bytes read big-endian: bit j of a
    c-bit code is the integer's bit c - 1 - j."""
    n, nb = codes.shape
    padded = np.zeros((n, 8), dtype=np.uint8)
    padded[:, 8 - nb:] = codes
    return padded.view(">u8").reshape(n).astype(np.uint64)


class BucketTable:
    """Codes grouped by value (CSR): ``keys`` (B,) distinct codes, sorted; ``starts`` / ``counts``
    (B,) their runs in ``ids`` (n,), the stored ids ordered by code. Built from the binary index."""

    def __init__(self, index, bits: int):
        self.bits = bits
        nbytes = bits // 8
        if index.ntotal:
            codes = faiss.vector_to_array(faiss.downcast_IndexBinary(index.index).xb).reshape(-1, nbytes)
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        else:
            codes, ids = np.zeros((0, nbytes), np.uint8), np.zeros(0, np.int64)
        c = _as_u64(codes)                                             # (n,)
        order = np.argsort(c, kind="stable")
        self.ids = ids[order]
        self.keys, self.starts, self.counts = np.unique(c[order], return_index=True, return_counts=True)
        self._masks: dict[int, np.ndarray] = {}
        self._dense = None
        if bits <= _DENSE_BITS:                                        # direct addressing: no search
            cnt = np.zeros(1 << bits, dtype=np.int64)
            cnt[self.keys.astype(np.int64)] = self.counts
            self._dense = (np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)

    def masks(self, r: int) -> np.ndarray:
        """(C(bits, r),) uint64 XOR masks flipping r of the code's bits."""
        m = self._masks.get(r)
        if m is None:
            if r == 0:
                m = np.zeros(1, dtype=np.uint64)
            else:
                bit = np.uint64(1) << (np.uint64(self.bits - 1) - np.arange(self.bits, dtype=np.uint64))
                combos = np.array(list(itertools.combinations(range(self.bits), r)), dtype=np.int64)
                m = np.bitwise_or.reduce(bit[combos], axis=1)
            self._masks[r] = m = m.astype(np.uint64)
        return m

    def lookup(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, count)`` of each bucket in ``codes`` (any shape); absent buckets count 0."""
        if self._dense is not None:
            c = codes.astype(np.int64)
            return self._dense[0][c], self._dense[1][c]
        if len(self.keys) == 0:
            return np.zeros(codes.shape, np.int64), np.zeros(codes.shape, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, codes), len(self.keys) - 1)
        hit = self.keys[pos] == codes
        return self.starts[pos], np.where(hit, self.counts[pos], 0)


def max_radius(bits: int) -> int:
    """The largest Hamming radius R whose ball (sum_{r <= R} C(bits, r) buckets) stays <= 2^16."""
    total, r = 0, 0
    while r <= bits:
        total += math.comb(bits, r)
        if total > _ENUM_CAP:
            return max(r - 1, 0)
        r += 1
    return bits


def search(table: BucketTable, model: DeepHashModel, ids: np.ndarray, xb: np.ndarray,
           xq: np.ndarray, k: int, candidates: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bucket search with capped reads + exact cosine rerank.

    ``ids`` (N,) sorted int64 and ``xb`` (N, d) unit rows are the stored vectors (``xb[j]`` has
    id ``ids[j]``); ``xq`` (nq, d) unit rows. Each query reads the buckets of its Hamming ball,
    radius 0, 1, ... until it holds ``need = max(k, candidates)`` vectors or the radius reaches
    :func:`max_radius`; the read is capped at ``need`` vectors (the bucket that crosses it is
    cut), so a query reranks at most ``need`` vectors whatever the bucket sizes. The rerank is
    exact cosine by FAISS (``knn_inner_products_by_idx``: no gathered copy of the candidates).
    A query whose ball holds fewer than ``min(k, N)`` falls back to exact search. Returns ``D``
    (nq, k) float32 cosine similarities, ``I`` (nq, k) int64 ids (-inf / -1 padding) and stats
    {"radius_hist", "fallback", "mean_candidates"} (candidates reranked per query, after the cap).
    """
    nq = xq.shape[0]
    D = np.full((nq, k), MISSING_D, dtype=np.float32)
    I = np.full((nq, k), MISSING_I, dtype=np.int64)
    stats = {"radius_hist": {}, "fallback": 0, "mean_candidates": 0.0}
    if nq == 0 or k == 0 or len(ids) == 0:
        return D, I, stats
    need = min(max(int(k), int(candidates)), len(ids))
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    qc = _as_u64(model.encode(xq))                                     # (nq,)
    total = np.zeros(nq, dtype=np.int64)
    rmax = max_radius(model.bits)
    hits = []                                                          # (query, start, count) runs
    active = np.arange(nq)
    for r in range(rmax + 1):
        b = qc[active, None] ^ table.masks(r)[None, :]                  # (a, C(bits, r))
        st, cnt = table.lookup(b)
        nz = np.nonzero(cnt)
        hits.append((active[nz[0]], st[nz], cnt[nz]))
        total[active] += cnt.sum(axis=1)
        done = (total[active] >= need) | (r == rmax)
        stats["radius_hist"][r] = int(done.sum())
        active = active[~done]
        if active.size == 0:
            break
    q_of = np.concatenate([h[0] for h in hits])
    run_start = np.concatenate([h[1] for h in hits])
    run_len = np.concatenate([h[2] for h in hits])
    order = np.argsort(q_of, kind="stable")                            # by query, then radius
    q_of, run_start, run_len = q_of[order], run_start[order], run_len[order]
    # cap: each query keeps the first `need` vectors of its runs (radius order)
    cum = np.cumsum(run_len)
    first_run = np.searchsorted(q_of, q_of)                            # index of the query's first run
    before = cum - run_len - (cum[first_run] - run_len[first_run])     # vectors of earlier runs, same query
    take = np.clip(need - before, 0, run_len)                          # (runs,)
    per_q = np.bincount(q_of, weights=take, minlength=nq).astype(np.int64)
    stats["mean_candidates"] = float(per_q.mean())
    contiguous = ids[-1] - ids[0] + 1 == len(ids)                     # ids 0..N-1 (no removals)
    tcum = np.concatenate([[0], np.cumsum(take)])
    q_runs = np.searchsorted(q_of, np.arange(nq + 1))                  # runs of query q: [q_runs[q], q_runs[q+1])
    block = max(1, (1 << 22) // need)                                  # queries per rerank block
    for lo in range(0, nq, block):
        hi = min(nq, lo + block)
        a, z = q_runs[lo], q_runs[hi]
        t = take[a:z]
        m = int(tcum[z] - tcum[a])
        pos = np.repeat(run_start[a:z] - (tcum[a:z] - tcum[a]), t) + np.arange(m)   # into table.ids
        qrow = np.repeat(q_of[a:z], t)                                  # (m,) their query
        rank = np.arange(m) + tcum[a] - tcum[q_runs[qrow]]             # position within its query
        cand = table.ids[pos]
        rows = cand - ids[0] if contiguous else np.searchsorted(ids, cand)
        sub = np.full((hi - lo, need), -1, dtype=np.int64)             # -1 ends a query's list
        sub[qrow - lo, rank] = rows
        vals = np.empty((hi - lo, k), dtype=np.float32)
        out = np.empty((hi - lo, k), dtype=np.int64)
        faiss.knn_inner_products_by_idx(faiss.swig_ptr(xq[lo:hi]), faiss.swig_ptr(xb), faiss.swig_ptr(sub),
                                        xb.shape[1], hi - lo, xb.shape[0], need, k,
                                        faiss.swig_ptr(vals), faiss.swig_ptr(out), need)
        ok = out >= 0
        D[lo:hi] = np.where(ok, vals, MISSING_D)
        I[lo:hi] = np.where(ok, ids[np.maximum(out, 0)], MISSING_I)
    short = np.flatnonzero(per_q < min(k, len(ids)))
    if short.size:
        stats["fallback"] = int(short.size)
        d_ex, i_ex = exact_search(xb, xq[short], k, normalized=True)
        D[short] = d_ex
        I[short] = np.where(i_ex >= 0, ids[np.maximum(i_ex, 0)], MISSING_I)
    return D, I, stats
