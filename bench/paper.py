"""The ModelHub paper's published numbers (Zhou et al. 2020), read from
``../shared/data/modelhub_paper_tables.md``, to print beside ours.

Our workloads differ from theirs: no activity-recognition (HAR) or CIFAR-10 data offline, so the
image rows stand beside our scikit-learn digits / MNIST-5k zoos (8x8 and 28x28 digits, logistic
regression and ExtraTrees, not ResNet56 on CIFAR-10); our entity-matching matcher is a TF-IDF +
gradient-boosting model on 12 ER-Magellan tasks, not DeepMatcher on 15; the paper has no
predicted-accuracy method and no label-skew zoo. Compare orders of magnitude, not decimals.
"""
from __future__ import annotations

import re
from pathlib import Path

TABLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "modelhub_paper_tables.md"
# our workload -> the paper's closest one
CLOSEST = {"er_magellan": "entity matching", "digits_skew": "image recognition",
           "digit_domains": "image recognition", "digits label-skew zoo": "image recognition",
           "mnist label-skew zoo": "image recognition"}
NOTE = ("paper = Zhou et al. 2020 (ModelHub), Tables 2-9, from ../shared/data/modelhub_paper_tables.md; "
        "their workloads differ (CIFAR-10 + ResNet56 for images, DeepMatcher on 15 EM tasks, HAR): "
        "compare orders of magnitude, not decimals")


def load(path: Path = TABLES) -> dict:
    """``{"errors": {workload: {metric: {method: value}}}, "pearson": {workload: {method: mean r}}}``;
    empty dicts when the file is absent."""
    out = {"errors": {}, "pearson": {}}
    if not Path(path).exists():
        return out
    text = Path(path).read_text(encoding="utf-8")
    methods = ("adaptivity", "js", "l2", "source-accuracy")
    for line in text.splitlines():
        m = re.match(r"\|\s*([A-Za-z ]+?)\s*\|\s*(top-[12] error)\s*\|(.*)\|\s*$", line)
        if m:
            cells = [c.strip() for c in m.group(3).split("|")]
            vals = {meth: float(c.rstrip("%")) / 100 for meth, c in zip(methods, cells) if c not in ("-", "")}
            out["errors"].setdefault(m.group(1), {})[m.group(2).replace("-", "").replace(" ", "_")] = vals
    blocks = {"activity recognition": ("Table 2", ("adaptivity", "js", "l2", "source-accuracy")),
              "entity matching": ("Table 4", ("adaptivity", "js", "source-accuracy")),
              "image recognition": ("Table 6", ("adaptivity", "js", "l2", "source-accuracy")),
              "NLP": ("Table 8", ("adaptivity", "js", "source-accuracy"))}
    for wl, (head, meths) in blocks.items():
        i = text.find(head + " (")
        if i < 0:
            continue
        body = text[i:text.find("\n\n", i)]
        num = r"-?\d+(?:\.\d+)?"
        rows = re.findall(rf"{num}(?:\s*/\s*{num})+", body.split("\n", 1)[1])
        vals = [[float(v) for v in re.findall(num, r)] for r in rows]
        vals = [v for v in vals if len(v) == len(meths)]
        if vals:
            out["pearson"][wl] = {m: sum(v[k] for v in vals) / len(vals) for k, m in enumerate(meths)}
    return out


def lines_beside(ours: dict, workload: str, paper: dict | None = None) -> list[str]:
    """Markdown rows: the paper's top-1 / top-2 error and mean Pearson r on the workload closest
    to ours, per method (JS and L2 are distances there: their r is negative when good)."""
    paper = load() if paper is None else paper
    key = next((v for k, v in CLOSEST.items() if workload.startswith(k)), None)
    if key is None or key not in paper["errors"]:
        return []
    err = paper["errors"][key]
    pr = paper["pearson"].get(key, {})
    out = [f"| paper ({key}) | ours ({workload}) |", "|---|---|"]
    for m in ("adaptivity", "js", "l2", "source-accuracy"):
        p1 = err.get("top1_error", {}).get(m)
        p2 = err.get("top2_error", {}).get(m)
        r = pr.get(m)
        q = ours.get(m, {})
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        out.append(f"| {m}: top-1 {fmt(p1)}, top-2 {fmt(p2)}, r {fmt(r)} | top-1 {fmt(q.get('top1_error'))}, "
                   f"top-2 {fmt(q.get('top2_error'))}, r {fmt(q.get('pearson'))} |")
    return out


def suite(opts) -> list[dict]:
    """The paper's numbers as result rows (``python -m bench paper``): top-1 / top-2 error and mean
    Pearson r per workload and method, read from the tables file; the suite the quality suite's
    "beside the paper" notes come from. No timing: these are published values."""
    from . import harness as H

    ctx = H.context("cpu", opts.quick)
    tables = load()
    rows = []
    for wl, metrics in sorted(tables["errors"].items()):
        for metric, per_method in sorted(metrics.items()):
            for m, v in per_method.items():
                rows.append(H.row(ctx, "paper", f"paper: {wl}", m, metric, v, baseline="source-accuracy",
                                  baseline_value=per_method.get("source-accuracy")))
    for wl, per_method in sorted(tables["pearson"].items()):
        for m, v in per_method.items():
            rows.append(H.row(ctx, "paper", f"paper: {wl}", m, "pearson_mean", v))
    if not rows:
        print(f"paper: no tables at {TABLES}: nothing to write")
    H.write_suite("paper_quick" if opts.quick else "paper", rows, out=opts.out_dir, quick=opts.quick,
                  tables={"notes": [NOTE], "source": str(TABLES)})
    print(f"paper: {len(rows)} published values from {TABLES.name}")
    return rows
