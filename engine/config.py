"""Sketch and search parameters, stored in the hub's ``meta`` when it is created.

``SketchConfig`` holds both kinds, as a hub stores them: the stored sketch parameters
(``STORED_PARAMS``: fixed at creation, since sketches of different entries must be comparable;
compared to open a hub with ``config=`` or to merge shards) and the hub's per-query defaults
(``QUERY_PARAMS``: what a query may override). ``QueryConfig`` is one query's parameters: the
hub's defaults (``SketchConfig.query_defaults()``) with the query's overrides, checked as
``SketchConfig`` checks them; the search pipeline and the methods read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InvalidArgumentError

COVERAGE_SPACES = ("rows", "embedding", "latent")  # what coverage codes (engine/coverage_spaces.py)


@dataclass(frozen=True)
class SketchConfig:
    seed: int = 0                    # every hash, shuffle and random projection derives from it
    num_perm: int = 128              # MinHash permutations per feature = lsh_k * lsh_l
    lsh_k: int = 4                   # MinHash values per LSH band
    lsh_l: int = 32                  # LSH bands per feature
    accuracy: float = 0.01           # relative accuracy of the value quantizer behind MinHash sets
    hist_accuracy: float = 0.1       # relative accuracy of the (coarser) histogram grid
    hist_bins: int = 64              # hash bins for categorical / text histograms
    partition_size: int = 500        # rows per partition (m)
    # per query: a query of fewer than query_min_partitions * partition_size rows is cut into
    # partitions sized from the query -- query_min_partitions of them, each of at least
    # query_partition_rows rows (jslsh.query_partition_size) -- so adaptivity is graded on small queries
    query_min_partitions: int = 8
    query_partition_rows: int = 25
    # such a small query is scored by adaptivity / js with more, wider LSH bands (projected at query
    # time) unless the query sets jslsh_l / jslsh_r itself: 32 bands at r=0.5 are too coarse to tell
    # near sources apart (chosen on the median-split seeds 0-2, reported on 3-4; bench/SUMMARY.md)
    small_query_jslsh_l: int = 128
    small_query_jslsh_r: float = 1.0
    # JS-LSH: h = ceil((a . sqrt(P) + b) / r); jslsh_k hashes per band, jslsh_l bands
    jslsh_r: float = 0.5
    jslsh_k: int = 4
    jslsh_l: int = 32
    # coverage: SimHash row codes of coverage_bits bits in coverage_tables tables; a code counts as
    # seen once the source has coverage_tau rows in it. Chosen on digits seeds 0-3 and checked on
    # held-out seeds 4-7 (python -m bench.bench_coverage; bench/SUMMARY.md)
    coverage_bits: int = 12
    coverage_tables: int = 8
    coverage_tau: float = 1.0
    # per query, how coverage counts a cell as covered (engine/coverage.py share_score): "share" --
    # the source's share of rows there against rho times the target's, over the cells of the first
    # coverage_resolution hyperplanes -- or "count" (the first definition: >= coverage_tau source
    # rows at all coverage_bits). "share", 6 bits, rho 1 were chosen on the median-split seeds 0-2 and
    # digits class skew / digits vs MNIST-5k seed 0, and reported on the other seeds (bench/SUMMARY.md)
    coverage_score: str = "share"
    coverage_resolution: int = 6
    coverage_rho: float = 1.0
    coverage_fallback: bool = True   # fall back to adaptivity when an entry's feature set is not covered
    # per query, what coverage codes: "rows" (the row transform above), "embedding" (the sample
    # embeddings given with hub.add / search(embedding=...)) or "latent" (the SimEx autoencoders'
    # latent vectors); see engine/coverage_spaces.py
    coverage_space: str = "rows"
    # SimEx: reconstruction loss ("mse" or "ssim") and whether to divide by the source's mean norm
    simex_loss: str = "mse"
    # (False for hubs created from issue 20 on: bench/bench_simex.py's Spearman with transfer accuracy
    # is 0.79 / 0.67 raw against 0.64 / 0.53 divided by the mean norm, seeds 0 / 1 --quick; a hub
    # keeps the value it was created with)
    simex_normalize: bool = False
    # per query: divide each autoencoder's loss by its own held-out error (AERecord.own_error, stored
    # at add) instead; entries added before it was stored fall back to simex_normalize's division and
    # say so. Off by default: 0.60 / 0.54 on the same benchmark (bench/SUMMARY.md)
    simex_relative: bool = False
    # per query: "latent" (hubs created from issue 20's second follow-up on) scores simex.latent_score --
    # the query's latents against the source's stored latent moments plus a small own-error term;
    # "calibrated" (hubs created from the first follow-up) simex.calibrate -- the query's marginal
    # moments against the source's plus the two-sided own-error term; "raw" the loss as above (hubs
    # created before keep "raw"). bench/SUMMARY.md, label-free section
    # "regions" (opt-in, issue 20's fourth follow-up) simex.region_score -- how the query's rows fill the
    # source rows' stored k-means regions (entries without them fall back to "latent"): Spearman >= 0.8 in
    # bench_simex but 8 / 6 of 10 on the breast cancer / wine median splits, so not the default
    simex_score: str = "latent"
    # ModelHub thresholds (Def. 3): a source feature matches a target feature when its estimated
    # similarity >= feature_threshold (t2); an entry goes on when overlap > overlap_threshold (t1)
    feature_threshold: float = 0.5
    overlap_threshold: float = 0.0
    match: str = "containment"       # "containment" (of the target in the source) or "jaccard"
    # large hubs: the query scores only the `shortlist` entries whose profiles (engine/profiles.py)
    # are nearest to its own, once the hub holds more than SHORTLIST_FACTOR x shortlist entries;
    # 0 scores every entry (exact, linear in the hub's size). Recall: bench/scale.py.
    shortlist: int = 256
    # predicted accuracy (engine/accuracy.py): naive-Bayes log-likelihoods are divided by
    # accuracy_temperature x the number of features before EM (the naive-Bayes path only: the class-
    # Gaussian path uses its own fixed accuracy_gauss.GAUSS_TEMPERATURE); accuracy_bootstrap resamples of the
    # query's rows give the interval (0: none). Chosen on the digits label-skew zoo, seeds 0-1
    # (python -m bench.bench_accuracy; bench/SUMMARY.md)
    accuracy_temperature: float = 0.1
    accuracy_bootstrap: int = 50
    # MinHash hash family (kernels/minhash.py): "ms64" multiply-shift (new hubs), "mod61" for a hub
    # created before the family was recorded (it stored none; signatures cannot be converted)
    minhash_family: str = "ms64"
    # how the shortlist is chosen (engine/screen.py): "exact" computes the method's own score for
    # every entry from stored dataset-level histograms (recall 1 where columns align by name);
    # "profile" ranks 128-dim random projections (faster on huge hubs, recall not held on zoos of
    # similar entries: bench/bench_shortlist.py)
    shortlist_screen: str = "exact"
    # "two-level" (engine/coarse.py): every entry ranked by the Bhattacharyya coefficient of its
    # dataset-level distributions (one sparse product), the method's own screen over the best
    # shortlist_coarse x shortlist; larger: recall closer to "exact", slower (bench/SUMMARY.md);
    # 0: each method's measured depth for the hub's size (coarse.coarse_for: COARSE_BY_METHOD up to 100k entries,
    # COARSE_AT_1M at 1M; 8 for a method not listed)
    shortlist_coarse: int = 0
    # two-level from coarse.ANN_MIN_ENTRIES (20k) entries: level 1 probes this many lists of a FAISS IVF
    # over projected level-1 vectors (indexes/level1.faiss) and keeps its first entries (above 100k entries
    # scaled up, x2 at 1M: coarse.nprobe_for); 0: level 1 ranks
    # every entry exactly (linear in the hub; bench/SUMMARY.md states the trade-off)
    shortlist_nprobe: int = 64

    def __post_init__(self):
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", self.seed,
               "an integer in [0, 2**63)")
        for name in ("num_perm", "lsh_k", "lsh_l", "hist_bins", "partition_size", "jslsh_k",
                     "jslsh_l", "coverage_bits", "coverage_tables", "query_min_partitions", "query_partition_rows",
                     "small_query_jslsh_l"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v,
                   "a positive integer")
        _check(self.num_perm == self.lsh_k * self.lsh_l, "num_perm", self.num_perm,
               f"lsh_k * lsh_l = {self.lsh_k * self.lsh_l}")
        for name in ("accuracy", "hist_accuracy"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and 1e-3 <= v <= 0.5, name, v, "a number in [0.001, 0.5]")
        _check(isinstance(self.jslsh_r, (int, float)) and self.jslsh_r > 0, "jslsh_r", self.jslsh_r,
               "a positive number")
        _check(isinstance(self.small_query_jslsh_r, (int, float)) and self.small_query_jslsh_r > 0,
               "small_query_jslsh_r", self.small_query_jslsh_r, "a positive number")
        _check(self.small_query_jslsh_l <= 4096, "small_query_jslsh_l", self.small_query_jslsh_l, "at most 4096")
        _check(isinstance(self.coverage_fallback, bool), "coverage_fallback", self.coverage_fallback, "True or False")
        _check(isinstance(self.coverage_space, str) and self.coverage_space in COVERAGE_SPACES, "coverage_space",
               self.coverage_space, "one of " + ", ".join(repr(s) for s in COVERAGE_SPACES))
        _check(self.simex_loss in ("mse", "ssim"), "simex_loss (loss)", self.simex_loss, "'mse' or 'ssim'")
        _check(isinstance(self.simex_normalize, bool), "simex_normalize (normalize)", self.simex_normalize,
               "True or False")
        _check(isinstance(self.simex_relative, bool), "simex_relative", self.simex_relative, "True or False")
        _check(self.simex_score in ("regions", "latent", "calibrated", "raw"), "simex_score", self.simex_score,
               "'regions', 'latent', 'calibrated' or 'raw'")
        _check(self.query_min_partitions <= 4096, "query_min_partitions", self.query_min_partitions, "at most 4096")
        _check(self.coverage_tables <= 65536, "coverage_tables", self.coverage_tables, "at most 65536")
        _check(self.coverage_bits <= 30, "coverage_bits", self.coverage_bits, "at most 30")
        _check(isinstance(self.coverage_tau, (int, float)) and self.coverage_tau > 0, "coverage_tau",
               self.coverage_tau, "a positive number")
        _check(self.coverage_score in ("share", "count"), "coverage_score", self.coverage_score, "'share' or 'count'")
        _check(isinstance(self.coverage_resolution, int) and not isinstance(self.coverage_resolution, bool)
               and 1 <= self.coverage_resolution <= 30, "coverage_resolution", self.coverage_resolution,
               "an integer in [1, 30]")
        _check(isinstance(self.coverage_rho, (int, float)) and not isinstance(self.coverage_rho, bool)
               and 0 < self.coverage_rho <= 1, "coverage_rho", self.coverage_rho, "a number in (0, 1]")
        for name in ("feature_threshold", "overlap_threshold"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, name, v, "a number in [0, 1]")
        _check(isinstance(self.shortlist, int) and not isinstance(self.shortlist, bool) and self.shortlist >= 0,
               "shortlist", self.shortlist, "a non-negative integer (0 scores every entry)")
        _check(self.shortlist_screen in ("exact", "profile", "two-level"), "shortlist_screen", self.shortlist_screen,
               "'exact', 'profile' or 'two-level'")
        _check(isinstance(self.shortlist_coarse, int) and not isinstance(self.shortlist_coarse, bool)
               and 0 <= self.shortlist_coarse <= 1 << 20, "shortlist_coarse", self.shortlist_coarse,
               "an integer in [0, 2^20] (0: each method's measured default)")
        _check(isinstance(self.shortlist_nprobe, int) and not isinstance(self.shortlist_nprobe, bool)
               and 0 <= self.shortlist_nprobe <= 1 << 16, "shortlist_nprobe", self.shortlist_nprobe,
               "an integer in [0, 65536] (0: level 1 exact)")
        _check(self.match in ("containment", "jaccard"), "match", self.match,
               "'containment' or 'jaccard'")
        _check(isinstance(self.accuracy_temperature, (int, float)) and not isinstance(self.accuracy_temperature, bool)
               and 1e-3 <= self.accuracy_temperature <= 1e3, "accuracy_temperature", self.accuracy_temperature,
               "a number in [0.001, 1000]")
        _check(isinstance(self.accuracy_bootstrap, int) and not isinstance(self.accuracy_bootstrap, bool)
               and 0 <= self.accuracy_bootstrap <= 1000, "accuracy_bootstrap", self.accuracy_bootstrap,
               "an integer in [0, 1000]")
        _check(self.minhash_family in ("ms64", "mod61"), "minhash_family", self.minhash_family, "'ms64' or 'mod61'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SketchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown sketch parameters {unknown}: known ones are {sorted(known)}")
        # recorded before families / calibrated SimEx: the old ones
        return cls(**{"minhash_family": "mod61", "simex_score": "raw", **d})

    def replace(self, **overrides) -> "SketchConfig":
        return SketchConfig.from_dict({**self.to_dict(), **overrides})

    def stored(self) -> dict:
        """The stored sketch parameters (``STORED_PARAMS``): what shards must share to merge."""
        return {k: getattr(self, k) for k in STORED_PARAMS}

    def query_defaults(self, **overrides) -> "QueryConfig":
        """This hub's per-query defaults as a ``QueryConfig``, with ``overrides`` (checked)."""
        return QueryConfig(**{**{k: getattr(self, k) for k in QUERY_PARAMS}, **overrides})

    def sketch_key(self) -> tuple:
        """The parameters two sketches must share to be comparable or mergeable (the MinHash family
        is appended unless it is mod61, so sketches made before families keep their key)."""
        key = (self.seed, self.num_perm, self.lsh_k, self.lsh_l, self.accuracy,
               self.hist_accuracy, self.hist_bins, self.coverage_bits, self.coverage_tables)
        return key if self.minhash_family == "mod61" else key + (self.minhash_family,)


QUERY_PARAMS = ("feature_threshold", "overlap_threshold", "match", "jslsh_r", "jslsh_k", "jslsh_l",
                "coverage_tau", "coverage_fallback", "coverage_space", "simex_loss", "simex_normalize", "simex_relative", "simex_score",
                "shortlist", "accuracy_temperature", "accuracy_bootstrap", "shortlist_screen", "shortlist_coarse",
                "shortlist_nprobe",
                "query_min_partitions",
                "query_partition_rows", "small_query_jslsh_l", "small_query_jslsh_r", "coverage_score",
                "coverage_resolution", "coverage_rho")


STORED_PARAMS = tuple(f.name for f in dataclasses.fields(SketchConfig) if f.name not in QUERY_PARAMS)


def _query_post_init(self) -> None:
    SketchConfig(**dataclasses.asdict(self))   # the same checks, with the same messages


# One query's parameters: the QUERY_PARAMS fields of SketchConfig, their defaults and checks.
QueryConfig = dataclasses.make_dataclass(
    "QueryConfig", [(f.name, f.type, dataclasses.field(default=f.default))
                    for f in dataclasses.fields(SketchConfig) if f.name in QUERY_PARAMS],
    frozen=True, namespace={"__post_init__": _query_post_init,
                            "replace": lambda self, **kw: dataclasses.replace(self, **kw),
                            "to_dict": lambda self: dataclasses.asdict(self),
                            "__doc__": "One query's parameters (config.QUERY_PARAMS): a hub's defaults with the "
                                       "query's overrides."})
QueryConfig.__module__ = __name__


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise InvalidArgumentError(f"{name}={value!r} is not valid: expected {expected}")


def __getattr__(name: str):
    # ``METHODS`` (the search methods' names) is the registry's (engine/methods/), read when asked:
    # the registry imports the scorers, which this module must not import at load time
    if name == "METHODS":
        from .methods import names

        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
