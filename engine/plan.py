"""``Plan`` and ``Stage``: what a search ran, stage by stage, with estimated and actual counts and
times (``Hub.explain``), like SQL's EXPLAIN ANALYZE. No fitsketch import: the client and the
protocol read plans too."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Stage:
    name: str
    detail: str
    estimated: int | None = None     # estimated rows (entries or features) out of this stage
    actual: int | None = None
    ms: float | None = None
    recall: float | None = None      # candidate stages: estimated recall of the exhaustive top k


@dataclass
class Plan:
    method: str
    k: int
    stages: list[Stage] = field(default_factory=list)
    # hub.explain: the matches and (hub, query, search options), for plot(); not sent over the wire
    matches: list = field(default_factory=list, repr=False, compare=False)
    source: tuple | None = field(default=None, repr=False, compare=False)

    def plot(self, path=None, **kwargs):
        """Why the candidates rank as they do (matplotlib, ``pip install 'fitsketch[plot]'``): the
        score per candidate with its evidence, for predicted accuracy the query's estimated class
        mixture against each model's per-class recall, and the top match's most different features.
        Returns the Figure, or writes a PNG at ``path`` and returns the path (engine/plots.py)."""
        from .plots import plot_plan

        return plot_plan(self, path, **kwargs)

    @contextmanager
    def run(self, stage: Stage):
        self.stages.append(stage)
        t0 = time.perf_counter()
        try:
            yield stage
        finally:
            stage.ms = (time.perf_counter() - t0) * 1e3

    def to_dict(self) -> dict:
        return {"method": self.method, "k": self.k,
                "stages": [dict(s.__dict__) for s in self.stages]}

    def __str__(self) -> str:
        lines = [f"plan: method={self.method} k={self.k}"]
        for i, s in enumerate(self.stages):
            est = "-" if s.estimated is None else str(s.estimated)
            act = "-" if s.actual is None else str(s.actual)
            ms = "-" if s.ms is None else f"{s.ms:.2f} ms"
            rec = "" if s.recall is None else f", estimated recall {s.recall:.2f}"
            lines.append(f"  {i + 1}. {s.name:<12} {s.detail}  (estimated {est}, actual {act}, {ms}{rec})")
        return "\n".join(lines)
