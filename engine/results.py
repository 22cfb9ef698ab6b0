"""Result types of a search and of the hub's reads: ``Entry`` (a registered model) and ``Match``
(one search result). No fitsketch import: every layer may use them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """A registered model (or bare dataset) and what the hub knows of its data."""
    name: str
    id: int
    metadata: dict
    features: list[str]
    kinds: list[str]
    n_rows: int
    n_partitions: int
    partition_size: int
    created: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Match:
    """One search result. ``score`` is higher-is-better for every method; ``evidence`` holds the
    method's raw numbers; ``features`` the matched (target feature, source feature, similarity)."""
    name: str
    score: float
    method: str
    overlap: float
    features: list[tuple[str, str, float]] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    # in-process only (never in to_dict or on the wire): arrays behind the score that a picture
    # reads, e.g. method="accuracy": {"labels", "mixture", "recall"} with score == mixture @ recall
    detail: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("detail", None)
        d["features"] = [list(f) for f in self.features]
        return d

    def __repr__(self) -> str:  # short: a few matched features and evidence values, not all of them
        feats = ", ".join(t if t == src else f"{t}~{src}" for t, src, _ in self.features[:3])
        more = f", +{len(self.features) - 3} more" if len(self.features) > 3 else ""
        ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in
                       list((k, v) for k, v in self.evidence.items() if isinstance(v, (int, float, str)))[:3])
        return (f"Match({self.name!r}, score={self.score:.4g}, method={self.method!r}, overlap={self.overlap:.2f}, "
                f"features=[{feats}{more}]" + (f", evidence={{{ev}}}" if ev else "") + ")")


def make_match(rec: dict, al, query, score: float, method: str, evidence: dict) -> Match:
    """A ``Match`` of entry record ``rec`` aligned by ``al`` (a minhash.Alignment) to ``query``. The
    matched-features list is built only for the k matches returned (``finish_features``)."""
    evidence["_features"] = (query.names, rec["features"], al.pairs)
    if getattr(query, "left_out", None):
        evidence["query_columns_left_out"] = list(query.left_out)   # all missing: not scored
    return Match(rec["name"], float(score), method, al.overlap, [], evidence, rec["metadata"])


def finish_features(m: Match) -> None:
    t_names, s_names, pairs = m.evidence.pop("_features")
    m.features = [(t_names[t], s_names[s], round(sim, 4)) for t, s, sim in pairs]
