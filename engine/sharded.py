"""A hub sharded by entry: searches fan out over the shards and the top-k lists merge.

    from fitsketch.sharded import open_sharded
    with open_sharded(["zoo-0.hub", "zoo-1.hub", "tcp://10.0.0.7:7400"], token=...) as hub:
        hub.add_sketch("model-a", sk)                 # lands on shard blake2b("model-a") mod 3
        hub.search(my_data, k=5, method="adaptivity")

**Routing.** Entry ``name`` lives on shard ``int.from_bytes(blake2b(name.encode("utf-8"),
digest_size=8).digest(), "big") % n_shards`` -- the same in every process and on every machine
(Python's ``hash()`` is salted per process). The shard list and its order are part of the layout:
open a sharded hub with the same addresses in the same order; :meth:`ShardedHub.misrouted` finds
entries a different order would have put elsewhere. Adding a shard moves about ``1/n`` of the
names: re-register them (``get`` the sketch from their sources) or keep the old list.

**Search.** The query is sketched once here (for ``adaptivity``, ``js``, ``exact-js``, ``l2``; the
row-level methods ``coverage`` and ``simex`` need the rows, so those ship the data), every shard
runs the same search with the same ``k``, and the lists merge by the hub's own order -- score,
then (adaptivity) band agreement, then overlap, then name -- cut to ``k``. Every method scores an
entry from the query and that entry alone (JS-LSH projections are seeded per coordinate), so the
result equals one hub holding all entries: same names, same scores, same order
(tests/test_sharded.py) -- below the profile shortlist's threshold. Above it each shard keeps its
own top ``shortlist`` entries, and the shards together score a superset of the entries one hub
would (an entry in the global top ``shortlist`` is in its shard's), so a sharded result is never
worse. A shard that shares no feature with the query contributes nothing;
:class:`fitsketch.errors.NoSharedFeaturesError` is raised only when no shard has a candidate.

**When to shard.** One hub is enough while it fits one machine's disk and page cache: an entry
costs about 64-82 KiB at 32 features x 10 partitions (16 KiB of MinHash signatures, ~1,000 band
postings, histograms at ~2 bytes per non-zero; bench/SUMMARY.md) and ~21 KiB at 3 features, and a
query's cost does not grow with the hub (the profile shortlist: ~50 ms at 100k entries of 32
features on 2 busy cores). 1M entries of 32 features are ~72 GB: past one disk, shard. Shard too
when the write rate exceeds one LMDB writer (~50-400 entries/s here, by entry size), or when
queries skip the shortlist (``where=`` filters, ``shortlist=0``, ``simex``) over so many entries
that the scoring needs more cores than one machine has. Shards behind servers search in
parallel, as far as there are cores; shards opened embedded in one process take their turns.
Each shard keeps its own shortlist, so a query scores ``n_shards * shortlist`` candidates: on one
machine sharding buys write rate and room, not latency (bench_scale_out, 200k entries of 3
features on 2 cores: 1 shard 64 ms; 2 served shards 64 ms, 4 served shards 104 ms, embedded 101
and 174 ms; adds 240 entries/s into one hub, 395 through 2 servers; at 1M entries 2 served
shards 86 ms and 4 served 139 ms, one hub 79 ms on another day). A shard of fewer entries than
the shortlist threshold is scored exhaustively, so keep shards above it. A sharded search costs
the slowest shard plus one merge of ``n_shards * k`` matches.
"""
from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

from . import errors as E
from . import methods as _methods

ShardConfigError = E.ShardConfigError
from .config import SketchConfig
from .sketch import Sketch



def shard_of(name: str, n_shards: int) -> int:
    """The shard of entry ``name``: blake2b-64 of its UTF-8 bytes mod ``n_shards`` (stable everywhere)."""
    if not isinstance(name, str) or not name:
        raise E.InvalidArgumentError(f"name={name!r} is not valid: give a non-empty str")
    h = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") % n_shards


def _sort_key(m):
    """The hub's order of matches, as the method that scored each says (engine/methods/)."""
    return (_methods.find(m.method) or _methods.Method()).sort_key(m)


def merge_topk(lists, k: int) -> list:
    """Merge per-shard match lists into the global top ``k`` (the hub's order)."""
    return sorted((m for ms in lists for m in ms), key=_sort_key)[:k]


class ShardedHub:
    """Entries spread over hubs (``fitsketch.Hub``) or served hubs (``fitsketch.connect`` clients)."""

    def __init__(self, shards: list, *, owned: bool = True, max_workers: int | None = None):
        if not shards:
            raise E.InvalidArgumentError("a sharded hub needs at least one shard")
        self.shards = list(shards)
        self._owned = owned
        self._pool = ThreadPoolExecutor(max_workers=max_workers or len(self.shards),
                                        thread_name_prefix="fitsketch-shard")
        # embedded hubs read concurrently; a socket client carries one request at a time
        from .hub import Hub

        self._locks = [None if isinstance(s, Hub) else threading.Lock() for s in self.shards]
        # only the stored sketch parameters must agree: per-query defaults (shortlist, thresholds)
        # may differ between shards, each answering with its own
        configs = [s.config for s in self.shards]
        ref = configs[0].stored()
        for i, c in enumerate(configs[1:], 1):
            diff = {k: (ref[k], v) for k, v in c.stored().items() if ref.get(k) != v}
            if diff:
                self.close()
                raise ShardConfigError(
                    f"shard {i} ({_label(self.shards[i])}) has other parameters than shard 0 "
                    f"({_label(self.shards[0])}): {', '.join(f'{k}={b!r} vs {a!r}' for k, (a, b) in diff.items())}: "
                    "create every shard with one SketchConfig")
        self.config: SketchConfig = configs[0]

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._owned:
            for s in self.shards:
                s.close()

    def __enter__(self) -> "ShardedHub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedHub({[_label(s) for s in self.shards]!r})"

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_of(self, name: str) -> int:
        return shard_of(name, len(self.shards))

    def _call(self, i: int, fn, *args, **kwargs):
        lock = self._locks[i]
        if lock is None:
            return fn(*args, **kwargs)
        with lock:
            return fn(*args, **kwargs)

    def _map(self, fn) -> list:
        """``[fn(i) for every shard i]``: served shards in the pool's threads (each server works in its
        own process), embedded shards one after the other in this thread (threads of one process
        share its GIL: 4 embedded shards searched in threads took 107 ms a query, in turn 74 ms)."""
        if self._pool is None:
            raise E.InvalidArgumentError("this sharded hub is closed: open it again with open_sharded(...)")
        futs = {i: self._pool.submit(fn, i) for i in range(len(self.shards)) if self._locks[i] is not None}
        out = [None if i in futs else fn(i) for i in range(len(self.shards))]
        for i, f in futs.items():
            out[i] = f.result()
        return out

    def _fan_out(self, op: str, *args, **kwargs) -> list:
        return self._map(lambda i: self._call(i, getattr(self.shards[i], op), *args, **kwargs))

    # ------------------------------------------------------------------ routed
    def add(self, name: str, data, **kwargs):
        i = self.shard_of(name)
        return self._call(i, self.shards[i].add, name, data, **kwargs)

    def add_sketch(self, name: str, sketch: Sketch, *, metadata: dict | None = None):
        i = self.shard_of(name)
        return self._call(i, self.shards[i].add_sketch, name, sketch, metadata=metadata)

    def add_sketches(self, items, *, batch: int = 1000) -> int:
        """``Hub.add_sketches`` routed: the items are grouped by shard and each shard adds its group.
        Served shards add in parallel (each server is its own process); embedded shards add one after
        the other in this thread, because threads of one process share its GIL: 12,000 entries on 4
        embedded shards went in at 229 entries/s in threads and 524 entries/s in turn. Each shard
        checks its whole group before writing; a shard that refuses its group leaves it unchanged,
        but the groups other shards accepted stay."""
        from .hub import Hub

        groups: list[list] = [[] for _ in self.shards]
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) not in (2, 3) or not isinstance(it[0], str):
                raise E.InvalidArgumentError(f"item {i} is not (name, sketch) or (name, sketch, metadata)")
            groups[self.shard_of(it[0])].append(it)
        if self._pool is None:
            raise E.InvalidArgumentError("this sharded hub is closed: open it again with open_sharded(...)")
        futs = [self._pool.submit(self._call, i, s.add_sketches, g, batch=batch)
                for i, (s, g) in enumerate(zip(self.shards, groups)) if g and not isinstance(s, Hub)]
        n, first = 0, None
        for i, (s, g) in enumerate(zip(self.shards, groups)):
            if g and isinstance(s, Hub):
                try:
                    n += s.add_sketches(g, batch=batch)
                except E.FitsketchError as e:
                    first = first or e
        for f in futs:
            try:
                n += f.result()
            except E.FitsketchError as e:
                first = first or e
        if first is not None:
            raise first
        return n

    def get(self, name: str):
        i = self.shard_of(name)
        return self._call(i, self.shards[i].get, name)

    def remove(self, name: str) -> None:
        i = self.shard_of(name)
        self._call(i, self.shards[i].remove, name)

    def __contains__(self, name) -> bool:
        if not isinstance(name, str) or not name:
            return False
        i = self.shard_of(name)
        return self._call(i, self.shards[i].__contains__, name)

    # ------------------------------------------------------------------ aggregated
    def __len__(self) -> int:
        return sum(self._fan_out("__len__"))

    def names(self) -> list[str]:
        """All names, in UTF-8 byte order (the order one hub lists them in)."""
        return sorted((n for ns in self._fan_out("names") for n in ns), key=lambda n: n.encode("utf-8"))

    def stats(self) -> dict:
        per = self._fan_out("stats")
        return {"shards": per, "entries": sum(s["entries"] for s in per), "config": self.config.to_dict()}

    def warm(self) -> int:
        """:meth:`fitsketch.Hub.warm` on every shard (served ones in parallel); the profiles loaded."""
        return sum(self._fan_out("warm"))

    def misrouted(self) -> list[tuple[str, int, int]]:
        """``(name, shard holding it, shard routing says)`` for every entry on the wrong shard."""
        out = []
        for i, ns in enumerate(self._fan_out("names")):
            out.extend((n, i, self.shard_of(n)) for n in ns if self.shard_of(n) != i)
        return out

    def search(self, data, *, k: int = 10, method: str = "auto", where: dict | None = None,
               feature_names=None, **overrides) -> list:
        """:meth:`fitsketch.Hub.search` over every shard; the merged top ``k``."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise E.InvalidArgumentError(f"k={k!r} is not valid: expected a positive integer")
        meth = _methods.find(method)   # an unknown method: every shard refuses it
        needs = meth.needs if meth is not None else frozenset()
        if meth is not None and _methods.ROWS not in needs and not isinstance(data, Sketch):
            # a method reading no rows: the query is sketched once here, and the sketch is shipped
            from .data import to_frame
            from .sketch import build_sketch

            from .jslsh import query_partition_size

            frame = to_frame(data, feature_names)
            # once, not once per shard; cut and cleaned as Hub.search cuts a query given as data
            q = self.config.replace(**{p: overrides[p] for p in ("query_min_partitions", "query_partition_rows")
                                       if p in overrides})   # validated like the hub's parameters
            m = query_partition_size(len(frame), self.config.partition_size, q.query_min_partitions,
                                     q.query_partition_rows)
            data = build_sketch(frame, self.config, partition_size=m, skip_empty=True)
            feature_names = None
        if _methods.LABELS in needs and not isinstance(data, Sketch) and "mixture" not in overrides:
            # every shard estimates the query's class mixture from the pool of ALL shards' labelled
            # entries (accuracy.merge_pools), as one hub holding them all would
            from .accuracy import merge_pools

            pools = self._map(lambda i: self._call(i, self.shards[i].class_pool, data, where=where,
                                                   feature_names=feature_names, **overrides))
            overrides = {**overrides, "class_pool": merge_pools(pools)}
        results = self._map(lambda i: self._search_one(i, data, k=k, method=method, where=where,
                                                       feature_names=feature_names, **overrides))
        lists = [r for r in results if r is not None]
        if not lists:
            raise E.NoSharedFeaturesError(
                f"no entry on any of the {len(self.shards)} shards shares features with the query: lower "
                "feature_threshold / overlap_threshold, or check the columns")
        return merge_topk(lists, k)

    def _search_one(self, i, data, **kw):
        try:
            return self._call(i, self.shards[i].search, data, **kw)
        except E.NoSharedFeaturesError:
            return None

    def nearest(self, xq, k: int = 10, *, level: str = "entry", **kwargs):
        """Entry-level nearest neighbours over every shard's dataset embeddings, merged by score.

        Sample-level ids are per shard, so only ``level="entry"`` fans out."""
        if level != "entry":
            raise E.InvalidArgumentError(f"level={level!r}: a sharded hub answers nearest() at level='entry' only "
                                         "(sample ids are per shard): query one shard for samples")
        missing = [_label(s) for s in self.shards if not hasattr(s, "nearest")]
        if missing:
            raise E.InvalidArgumentError(f"shards {missing} do not support nearest(): open them embedded")
        per = self._fan_out("nearest", xq, k, level="entry", **kwargs)
        import numpy as np

        if np.ndim(xq) == 1:
            return merge_topk(per, k)
        return [merge_topk([p[q] for p in per], k) for q in range(len(per[0]))]


def _label(shard) -> str:
    return str(getattr(shard, "address", None) or getattr(shard, "path", None) or shard)


def _is_server(address: str) -> bool:
    if address.startswith(("tcp://", "unix:")):
        return True
    try:
        st = os.stat(address)
    except OSError:
        return False
    if stat.S_ISSOCK(st.st_mode):
        return True
    return stat.S_ISDIR(st.st_mode) and os.path.exists(os.path.join(address, "fitsketch.sock"))


def open_sharded(addresses, *, create: bool = True, config: SketchConfig | None = None,
                 token: str | None = None, timeout: float = 30.0, device: str = "auto",
                 max_workers: int | None = None) -> ShardedHub:
    """Open a sharded hub over hub directories (opened embedded, created with ``config`` when
    missing) and/or served hubs (``tcp://``, ``unix:``, socket paths, or directories with a running
    server). The list and its order define the routing; every shard must share one SketchConfig."""
    if isinstance(addresses, (str, os.PathLike)) or not addresses:
        raise E.InvalidArgumentError(f"addresses={addresses!r}: give a non-empty list of hub paths or server addresses")
    import fitsketch

    shards = []
    try:
        for a in addresses:
            a = os.fspath(a)
            if _is_server(a):
                shards.append(fitsketch.connect(a, timeout=timeout, token=token))
            else:
                shards.append(fitsketch.open(a, create=create, config=config, device=device))
    except BaseException:
        for s in shards:
            s.close()
        raise
    return ShardedHub(shards, owned=True, max_workers=max_workers)
