"""Sketching Parquet datasets larger than one machine: map row groups to sketches, merge in a tree.

    from fitsketch.distributed import sketch_parquet, add_parquet
    sk = sketch_parquet("s3-mirror/part-*.parquet", config=hub.config, engine="ray")
    hub.add_sketch("model-a", sk)            # or add_parquet(hub, "model-a", "part-*.parquet")

Engines: ``"ray"`` (plain Ray tasks; ``pip install 'fitsketch[ray]'``; ``address=`` joins a
cluster, none starts a local one), ``"processes"`` (a ``concurrent.futures`` process pool on this
machine) and ``"local"`` (this process, on threads; one thread is the reference). All three
compute the same sketch, defined here, so the distributed sketch equals the single-process one bit for bit (every integer part:
signatures, histograms, counts, coverage counts; and the float ``sums`` too, because the merge
tree is fixed -- see below):

1. **Files**: the given paths, or the matches of a glob, sorted; file ``i`` in that order.
   Every file must have the columns (``columns=`` or file 0's) with the same Arrow types, checked
   on the footers before any work starts (:class:`SchemaDriftError`, :class:`UnreadableFileError`).
2. **Units**: the non-empty row groups ``(i, g)`` of the files, in file then row-group order.
   A unit is the map task: it ships ``(path, g, config, kinds, centre)``, a few hundred bytes,
   and returns the unit's sketch as msgpack bytes (never pickle).
3. **Kinds**: a column's kind (numeric / categorical / text) is detected, as ``build_sketch``
   does on a whole frame, on its first 1000 non-missing values in dataset order.
4. **Coverage centre**: a first pass maps every unit to per-dimension sums and counts of the
   coverage row transform (``coverage.row_matrix``); they are added in unit order and the centre is
   ``sum / count`` (0 where a dimension has no value). Give ``coverage_center=`` to skip the pass.
   ``engine="local"`` reads each unit once for both passes: pass 1 also builds the unit's sketch but
   its codes and keeps it, with its transformed rows, while those fit ``parquet_units.LOCAL_CACHE_BYTES``
   (1 GiB); pass 2 then only codes them (the same sketch, bit for bit).
5. **Partitions**: the rows of unit ``(i, g)`` are shuffled by a generator seeded with
   ``(hub seed, i, g)`` (``shuffle=False``: kept in file order) and cut into partitions of
   ``partition_size`` rows. Partitions never span units: a unit whose row count is not a multiple
   of ``partition_size`` ends with a short partition. Size row groups as multiples of it.
6. **Merge**: unit sketches are merged by :meth:`Sketch.merge` in a fixed balanced binary tree over
   the unit order (node ``(level, j)`` merges ``(level-1, 2j)`` and ``(level-1, 2j+1)``), as soon as
   both children are in, whatever order the workers finish in. Merge keeps partition order, so
   the result's partitions are the units' partitions in unit order.

Merge laws (tests/test_distributed.py): ``merge`` is associative for every part, bit for bit, and
:func:`empty_like` is its two-sided identity. It is *not* commutative as a whole -- histograms are
per partition and ``b.merge(a)`` lists ``b``'s partitions first -- but it is commutative for every
order-free part: signatures (min), ``sums`` / ``counts`` / ``n_rows`` / ``n_partitions`` (sum),
coverage counts (sum) and histogram totals (:meth:`Sketch.totals`). ``sums`` are float64 sums, so
regrouping them changes the last bits (relative difference below 1e-12 here); the fixed tree of
step 6 makes every engine group them the same way, so the engines agree exactly.

The sketch of a unit uses the same kernels as ``build_sketch`` (``quantize_column``, ``minhash_csr``,
``coverage.row_matrix`` / ``coverage.build``) with the kinds of step 3 fixed; a column that is
missing in one unit but not in the whole dataset is legal here (it adds no MinHash elements), and
:class:`fitsketch.errors.EmptyColumnError` is raised only when it is missing everywhere.

Failures raise before anything is written: :func:`add_parquet` registers the sketch only after
the whole job succeeded, so a worker that raises or a Ray cluster that goes away mid-job
(:class:`DistributedError`) leaves every hub as it was.
"""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait

import numpy as np

from . import errors as E
from .config import SketchConfig
from .kernels._device import resolve_device, usable_cpus
from .parquet_units import (KIND_SAMPLE, ParquetPlan, Unit, _quantize, detect_kinds, plan,  # noqa: F401 - also
                            resolve_files, sketch_frame, unit_sketch, unit_stats)       # their old import path
from .parquet_units import finish_unit, local_first_pass, ordered_map
from .sketch import Sketch

MissingDependencyError = E.MissingDependencyError
UnreadableFileError = E.UnreadableFileError
SchemaDriftError = E.SchemaDriftError
DistributedError = E.DistributedError

log = logging.getLogger(__name__)

ENGINES = ("ray", "processes", "local")
LOCAL_THREADS = 8      # engine="local" uses at most this many threads unless workers= says otherwise


EMPTY_SIG = np.uint32(0xFFFFFFFF)


# ----------------------------------------------------------------------------- merge helpers
def empty_like(sketch: Sketch) -> Sketch:
    """The identity of :meth:`Sketch.merge` for sketches like ``sketch`` (no rows, no partitions)."""
    nf, num_perm = sketch.signatures.shape
    hist = {"part": np.zeros(0, np.int32), "feat": np.zeros(0, np.int32), "bucket": np.zeros(0, np.int32),
            "count": np.zeros(0, np.uint32)}
    cov = None
    if sketch.coverage is not None:
        cov = {**{k: v for k, v in sketch.coverage.items() if k != "more"}, "table": np.zeros(0, np.int32),
               "code": np.zeros(0, np.int64), "count": np.zeros(0, np.uint32)}
    return Sketch(tuple(sketch.config_key), sketch.partition_size, list(sketch.names), list(sketch.kinds),
                  np.full((nf, num_perm), EMPTY_SIG, dtype=np.uint32), np.zeros(nf, np.float64),
                  np.zeros(nf, np.int64), 0, 0, hist, cov)


def merge_all(sketches: list[Sketch]) -> Sketch:
    """Merge sketches (in order) in the fixed balanced tree of the module docstring."""
    if not sketches:
        raise E.InvalidArgumentError("merge_all got no sketches: give at least one")
    tree = _TreeMerge(len(sketches))
    for i, s in enumerate(sketches):
        tree.add(i, s)
    return tree.result()


class _TreeMerge:
    """Balanced binary merge tree over ``n`` leaves in order; leaves may arrive in any order.

    Level sizes are ``n_0 = n``, ``n_{l+1} = ceil(n_l / 2)``; node ``(l+1, j)`` is the merge of
    ``(l, 2j)`` and ``(l, 2j+1)``, or ``(l, 2j)`` itself when it is the odd last node of level ``l``.
    At most one pending node per level and pair is held, so memory stays O(log n) sketches when
    results arrive roughly in order.
    """

    def __init__(self, n: int):
        self.sizes = [n]
        while self.sizes[-1] > 1:
            self.sizes.append((self.sizes[-1] + 1) // 2)
        self.pending: dict[tuple[int, int], Sketch] = {}

    def add(self, j: int, sketch: Sketch, level: int = 0) -> None:
        while level < len(self.sizes) - 1:
            sib = j ^ 1
            if sib >= self.sizes[level]:           # odd last node: promoted as is
                j, level = j // 2, level + 1
                continue
            other = self.pending.pop((level, sib), None)
            if other is None:
                self.pending[(level, j)] = sketch
                return
            sketch = other.merge(sketch) if sib < j else sketch.merge(other)
            j, level = j // 2, level + 1
        self.pending[(level, j)] = sketch

    def result(self) -> Sketch:
        top = (len(self.sizes) - 1, 0)
        if top not in self.pending or len(self.pending) != 1:
            raise E.InternalError(f"merge tree incomplete: pending nodes {sorted(self.pending)}")
        return self.pending[top]


# ----------------------------------------------------------------------------- engines
def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "engine='ray' needs Ray, which is not installed: pip install 'fitsketch[ray]' (or "
            "pip install ray), or use engine='processes' to run on this machine's cores") from None
    return ray


def _run_pool(pool, fn, specs, on_result):
    futs = {pool.submit(fn, s): i for i, s in enumerate(specs)}
    try:
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    res = f.result()
                except E.FitsketchError:
                    raise
                except Exception as e:
                    raise DistributedError(
                        f"a worker process failed on {_where(specs[futs[f]])}: {type(e).__name__}: {e}: "
                        "nothing was written; run again (engine='local' shows the error in this process)") from e
                on_result(futs[f], res)
    except BaseException:
        for f in futs:
            f.cancel()
        raise


def _run_ray(fn, specs, on_result, ray):
    task = ray.remote(num_cpus=1, max_retries=1)(fn)
    try:
        refs = [task.remote(s) for s in specs]
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                on_result(index[r], ray.get(r))
    except E.FitsketchError:
        raise
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, E.FitsketchError):
            raise cause from None
        if not ray.is_initialized():
            what = "the Ray runtime shut down during the job"
        else:
            first = (str(e).splitlines() or [""])[0]
            what = f"the Ray job failed ({type(e).__name__}: {first[:200]}{'...' if len(first) > 200 else ''})"
        raise DistributedError(f"{what}: nothing was written; check the cluster (`ray status`) and run again, "
                               "or use engine='processes'") from e


def _where(spec: dict) -> str:
    return f"row group {spec['row_group']} of {spec['path']!r}"


@contextlib.contextmanager
def _main_not_reimported():
    """Spawned workers re-import the parent's ``__main__`` from its file. When that is no file --
    ``python -`` (``<stdin>``), an embedded interpreter, some notebooks -- hide the name while the
    workers start, so they start clean (the map functions live in this module, not in __main__)."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    hide = main is not None and getattr(main, "__spec__", None) is None and path is not None \
        and not os.path.isfile(path)
    if hide:
        del main.__file__
    try:
        yield
    finally:
        if hide:
            main.__file__ = path


class _Session:
    """Runs map tasks on one engine for both passes; owns the pool or the Ray instance it started."""

    def __init__(self, engine, address, workers, device: str = "auto"):
        self.engine, self.workers, self.ray, self.pool, self.owned = engine, workers, None, None, False
        # engine="local": threads of this process (one unit each, results in unit order); one where the
        # kernels run on a GPU (its kernels are compiled and launched from one thread)
        self.threads = 1
        if engine == "local":
            self.threads = (workers or min(usable_cpus(), LOCAL_THREADS)) if resolve_device(device) == "cpu" else 1
        if isinstance(engine, Executor):
            self.pool, self.engine = engine, "processes"
        elif engine == "processes":
            import multiprocessing as mp

            n = workers or usable_cpus()
            log.info("engine='processes': a pool of %d processes on this machine (not Ray)", n)
            # spawn, not fork: the parent may hold torch / OpenMP threads, which fork does not carry over
            # safely. As with any spawn pool, a script must call this under `if __name__ == "__main__":`.
            self.pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"))
            self.owned = True
            # workers start on demand: keep a file-less __main__ hidden while this pool lives
            self._hidden = _main_not_reimported()
            self._hidden.__enter__()
        elif engine == "ray":
            ray = _import_ray()
            if not ray.is_initialized():
                kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
                if address is None:
                    kw["num_cpus"] = workers or usable_cpus()
                try:
                    ray.init(address=address, **kw)
                except Exception as e:
                    raise DistributedError(f"cannot start or join Ray at address={address!r}: {e}: check the "
                                           "address (`ray status`), or use engine='processes'") from e
                self.owned = True
            self.ray = ray

    def run(self, fn, specs, on_result):
        if self.engine == "ray":
            if not self.ray.is_initialized():
                raise DistributedError("the Ray runtime was shut down during the job: nothing was written; "
                                       "run again")
            return _run_ray(fn, specs, on_result, self.ray)
        if self.pool is not None:
            return _run_pool(self.pool, fn, specs, on_result)
        with contextlib.closing(ordered_map(fn, specs, self.threads)) as results:   # an error here stops the rest
            for i, res in enumerate(results):
                on_result(i, res)

    def close(self):
        if not self.owned:
            return
        if self.pool is not None:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)
            finally:
                hidden, self._hidden = getattr(self, "_hidden", None), None
                if hidden is not None:
                    hidden.__exit__(None, None, None)
        elif self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


# ----------------------------------------------------------------------------- public API
def sketch_parquet(paths_or_glob, *, config: SketchConfig | None = None, engine: str = "ray", columns=None,
                   partition_size: int | None = None, address: str | None = None, progress: bool = True,
                   workers: int | None = None, shuffle: bool = True, coverage_center=None,
                   device: str = "auto") -> Sketch:
    """Sketch the rows of Parquet files, one map task per row group, merged in a tree.

    ``engine``: ``"ray"`` (``address`` of a running cluster, or None to start a local Ray on
    ``workers`` CPUs), ``"processes"`` (``workers`` processes here), ``"local"`` (this process, on
    ``workers`` threads, default one per CPU up to ``LOCAL_THREADS``; ``workers=1``: one thread, the
    reference), or a ``concurrent.futures`` process pool of your own (reused, not shut down).
    All engines return the same sketch (module docstring). ``progress`` shows
    tqdm bars over row groups; ``coverage_center`` skips the first (centre) pass.
    """
    config = config or SketchConfig()
    if not isinstance(config, SketchConfig):
        raise E.InvalidArgumentError(f"config must be a SketchConfig, got {type(config).__name__}")
    if not isinstance(engine, Executor) and engine not in ENGINES:
        raise E.InvalidArgumentError(f"engine={engine!r} is not valid: use one of {', '.join(map(repr, ENGINES))}")
    m = config.partition_size if partition_size is None else partition_size
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise E.InvalidArgumentError(f"partition_size={m!r} is not valid: expected a positive integer")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise E.InvalidArgumentError(f"workers={workers!r} is not valid: expected a positive integer")
    if engine == "ray":
        _import_ray()                                  # fail fast, before reading anything
    p = plan(paths_or_glob, columns)
    kinds = detect_kinds(p)
    threads = None if engine == "local" else 1           # one torch thread per worker: no oversubscription
    base = {"columns": p.columns, "kinds": kinds, "config": config.to_dict(), "threads": threads}
    specs = [{**base, "path": u.path, "file_index": u.file_index, "row_group": u.row_group, "num_rows": u.num_rows}
             for u in p.units]
    log.info("sketching %d rows in %d row groups of %d file(s) with engine=%r", p.n_rows, len(p.units),
             len(p.files), engine)
    session = _Session(engine, address, workers, device)
    pending: dict = {}
    try:
        specs = [{**s, "partition_size": m, "shuffle": bool(shuffle), "device": device} for s in specs]
        if coverage_center is None and session.engine == "local":   # one read of each unit for both passes
            coverage_center, pending = _local_center_pass(specs, progress, session.threads)
        elif coverage_center is None:
            coverage_center = _center_pass(session, specs, progress)
        else:
            coverage_center = np.asarray(coverage_center, dtype=np.float64)
        specs = [{**s, "center": coverage_center} for s in specs]
        tree = _TreeMerge(len(specs))
        bar = _bar(progress, p.n_rows, "sketching row groups", "row")

        def on_sketch(i, data):
            sk = data if isinstance(data, Sketch) else Sketch.from_bytes(data)
            tree.add(i, sk)
            if bar is not None:
                bar.update(sk.n_rows)

        try:
            todo = [i for i in range(len(specs)) if i not in pending]
            done = sorted(pending)
            with contextlib.closing(ordered_map(lambda i: finish_unit(pending.pop(i), specs[i], coverage_center),
                                                done, session.threads)) as finished:
                for i, sk in zip(done, finished):
                    on_sketch(i, sk)
            session.run(unit_sketch, [specs[i] for i in todo], lambda j, data: on_sketch(todo[j], data))
        finally:
            if bar is not None:
                bar.close()
    finally:
        session.close()
    out = tree.result()
    empty = [n for n, s in zip(out.names, out.signatures) if (s == EMPTY_SIG).all()]
    if empty:
        raise E.EmptyColumnError(f"columns {empty} have no values in any of the {p.n_rows} rows: leave them "
                                 f"out with columns=[...]")
    return out


def _local_center_pass(specs: list[dict], progress: bool, threads: int = 1) -> tuple[np.ndarray, dict]:
    """engine="local": the centre of :func:`_center_pass` and the units sketched but for their codes
    (``parquet_units.local_first_pass``, on ``threads`` threads)."""
    bar = _bar(progress, len(specs), "coverage centre", "row group")
    try:
        parts, pending = local_first_pass(specs, None if bar is None else (lambda i: bar.update(1)), threads)
    finally:
        if bar is not None:
            bar.close()
    return _center_of(parts), pending


def _center_pass(session: _Session, specs: list[dict], progress: bool) -> np.ndarray:
    from .storage import unpack

    parts: list = [None] * len(specs)
    bar = _bar(progress, len(specs), "coverage centre", "row group")

    def on_stats(i, data):
        parts[i] = unpack(data)
        if bar is not None:
            bar.update(1)

    try:
        session.run(unit_stats, specs, on_stats)
    finally:
        if bar is not None:
            bar.close()
    return _center_of(parts)


def _center_of(parts: list[dict]) -> np.ndarray:
    total = np.zeros_like(parts[0]["sum"])
    count = np.zeros_like(parts[0]["count"])
    for d in parts:                       # unit order: the same float sum on every engine
        total = total + d["sum"]
        count = count + d["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def add_parquet(hub, name: str, paths_or_glob, *, metadata: dict | None = None, **kwargs):
    """Sketch Parquet files with :func:`sketch_parquet` (``hub.config``) and register the sketch as
    ``name`` -- only once the whole job has succeeded. ``hub``: a Hub, a Client or a ShardedHub."""
    if not isinstance(name, str) or not name:
        raise E.InvalidArgumentError(f"name={name!r} is not valid: give a non-empty str")
    if name in hub:
        raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
    if "config" in kwargs:
        raise E.InvalidArgumentError("add_parquet sketches with the hub's config: do not pass config=")
    sk = sketch_parquet(paths_or_glob, config=hub.config, **kwargs)
    return hub.add_sketch(name, sk, metadata=metadata)
