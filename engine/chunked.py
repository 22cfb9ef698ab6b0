"""Adding a CSV / TSV / Parquet file in chunks, so memory stays bounded whatever the file's size.

    from fitsketch.chunked import add_file
    add_file(hub, "model-a", "train.csv", metadata={"task": "em"}, progress=True)

The file is read ``chunk rows`` at a time (``pandas.read_csv(chunksize=)`` / ``pyarrow``
``iter_batches``); each chunk is sketched with the hub's config and the chunk sketches are merged
(:meth:`Sketch.merge`), then registered with ``hub.add_sketch`` in one transaction. Peak memory is
about one or two chunks' frames and transforms plus the sketch, not the file.

What is the same and what changes against ``hub.add(name, whole_frame)``:

* A file of at most one chunk (``chunk_rows(...)`` rows) gives exactly the sketch of the whole
  frame (same kinds, shuffle, partitions and coverage centre).
* A longer file: signatures, feature sums / counts, row count and histogram totals are those of
  the whole file (merge is exact for them). Partitions are drawn per chunk: chunk ``i``'s rows are
  shuffled by a generator seeded with ``(hub seed, i)`` and cut into partitions that never span
  chunks (the chunk length is a multiple of the partition size, so only the last partition of the
  file may be short). Column kinds are detected on the first chunk; the coverage centre is the
  first chunk's mean of the coverage row transform, shared by every chunk (so coverage counts
  merge exactly). The result is deterministic: the same file, hub seed and partition size give
  the same sketch, bit for bit.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import errors as E

CHUNK_BYTES = 16 << 20      # about this much CSV text per chunk (peak memory ~ a few chunks)
MIN_CHUNK_ROWS = 10_000
MAX_CHUNK_ROWS = 1_000_000


def chunk_rows(bytes_per_row: float, partition_size: int) -> int:
    """Rows per chunk: about CHUNK_BYTES of input, a multiple of ``partition_size``."""
    rows = int(CHUNK_BYTES / max(float(bytes_per_row), 1.0))
    rows = min(max(rows, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS)
    return max(partition_size, rows // partition_size * partition_size)


def _kind(path: Path) -> str:
    name = path.name.lower()
    for s in (".gz", ".bz2", ".zip", ".xz"):
        if name.endswith(s):
            name = name[: -len(s)]
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise E.UnsupportedDataError(f"{str(path)!r}: chunked adds read .csv, .tsv and .parquet files")


def supports(path) -> bool:
    try:
        return isinstance(path, (str, os.PathLike)) and Path(path).is_file() and _kind(Path(path)) in ("csv", "parquet")
    except E.FitsketchError:
        return False


def _csv_chunks(path: Path, sep, partition_size: int):
    import pandas as pd

    from .data import SNIFF_BYTES, csv_options, warn_one_column

    kw = csv_options(path, sep)
    size = path.stat().st_size
    with open(path, "rb") as f:
        sample = f.read(SNIFF_BYTES)
    n_lines = max(sample.count(b"\n") - 1, 1)
    per_row = len(sample) / n_lines if len(sample) >= SNIFF_BYTES else max(size, 1) / n_lines
    rows = chunk_rows(per_row, partition_size)
    compressed = path.suffix.lower() in (".gz", ".bz2", ".zip", ".xz")
    with open(path, "rb") as f:
        try:
            reader = pd.read_csv(f if not compressed else path, chunksize=rows, **kw)
            first = True
            for df in reader:
                if first:
                    warn_one_column(df, path, kw["sep"])
                    first = False
                yield df, (f.tell() if not compressed else 0)   # bytes read so far (pandas reads ahead)
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise E.UnsupportedDataError(f"could not read {str(path)!r}: {e}") from e


def _parquet_chunks(path: Path, partition_size: int):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n = pf.metadata.num_rows
        per_row = (path.stat().st_size / max(n, 1)) * 4     # decoded rows are bigger than encoded ones
        rows = chunk_rows(per_row, partition_size)
        done = 0
        for batch in pf.iter_batches(batch_size=rows):
            done += batch.num_rows
            yield batch.to_pandas(), done
    except (OSError, ValueError) as e:
        raise E.UnreadableFileError(f"could not read {str(path)!r} as Parquet: {e}") from e


def _bar(total, enabled: bool, unit: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="adding (reading, sketching)", unit=unit, unit_scale=True, leave=True,
                dynamic_ncols=True)


def sketch_file(path, config, *, partition_size: int | None = None, sep=None, device: str = "auto", bar=None):
    """The chunked sketch of one CSV / TSV / Parquet file (see the module docstring)."""
    from .distributed import _quantize
    from .quantize import detect_kind
    from .sketch import build_sketch

    path = Path(path)
    if not path.is_file():
        raise E.UnsupportedDataError(f"data path {str(path)!r} does not exist: pass an existing file")
    m = config.partition_size if partition_size is None else partition_size
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise E.InvalidArgumentError(f"partition_size={m!r} is not valid: expected a positive integer")
    kind = _kind(path)
    chunks = _csv_chunks(path, sep, m) if kind == "csv" else _parquet_chunks(path, m)
    from .data import to_frame

    def advance(done):   # after a chunk is sketched: bytes read (CSV) or rows (Parquet) up to it
        if bar is not None and done:
            bar.update(max(0, min(done, bar.total or done) - bar.n))

    if bar is not None and kind == "parquet":
        import pyarrow.parquet as pq

        try:
            bar.total = pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - the reader below raises the named error
            pass
    merged = elems = None
    kinds = center = None
    i = 0
    cur, done = next(chunks, (None, 0))
    if cur is None:
        raise E.EmptyDataError(f"{str(path)!r} has no rows: give at least one row")
    while cur is not None:
        nxt, nxt_done = next(chunks, (None, 0))
        if i == 0 and nxt is None:   # one chunk: exactly the sketch of the whole frame
            out = build_sketch(cur, config, partition_size=m, device=device)
            advance(done)
            return out
        cur = to_frame(cur)
        if i == 0:
            kinds = [detect_kind(col) for _, col in cur.items()]
            from . import coverage as _cov

            X, _, _ = _cov.row_matrix(cur, kinds, config.seed)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # an all-missing dimension: centre 0
                center = np.nan_to_num(np.nanmean(X, axis=0))
            del X
        elif list(cur.columns) != merged.names:
            raise E.SchemaDriftError(f"{str(path)!r}: chunk {i} has columns {list(cur.columns)[:10]}, not "
                                     f"{merged.names[:10]}")
        # signatures are hashed once, at the end, from the union of the chunks' sets (one kernel call,
        # not one per chunk): the MinHash of a union is the min of the MinHashes, so this is exact
        sk = build_sketch(cur, config, partition_size=m, kinds=list(kinds), shuffle=False, shuffle_key=(i,),
                          coverage_center=center, device=device, quantize=_quantize, minhash=False)
        elems = sk.set_elems if elems is None else [np.union1d(a, b) for a, b in zip(elems, sk.set_elems)]
        sk.rows = sk.row_owner = sk.frame = sk.set_elems = None
        merged = sk if merged is None else merged.merge(sk)
        del sk
        advance(done)
        cur, done, i = nxt, nxt_done, i + 1
    from .kernels.minhash import EMPTY, minhash_csr

    lengths = np.array([len(e) for e in elems], dtype=np.int64)
    offsets = np.zeros(len(elems) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(elems) if elems else np.zeros(0, np.int64)
    merged.signatures = minhash_csr(values, offsets, num_perm=config.num_perm, seed=config.seed, device=device)
    empty = [n for n, sig in zip(merged.names, merged.signatures) if (sig == EMPTY).all()]
    if empty:
        raise E.EmptyColumnError(f"{str(path)!r}: column(s) {empty[:5]} hold no value in any row: drop them")
    return merged


def add_file(hub, name: str, path, *, metadata: dict | None = None, partition_size: int | None = None,
             sep=None, progress: bool = False):
    """Sketch ``path`` in chunks and register it as entry ``name`` (one transaction); one progress
    bar over the whole add (bytes read for CSV, rows for Parquet, then the write) when
    ``progress``."""
    from .validate import _check_metadata, _check_name

    _check_name(name)
    _check_metadata(metadata)
    if name in hub:
        raise E.EntryExistsError(f"an entry named {name!r} exists: remove it first or choose another name")
    path = Path(path)
    kind = _kind(path)
    total = path.stat().st_size if kind == "csv" and path.is_file() else None
    bar = _bar(total, progress, "B" if kind == "csv" else "row")
    try:
        sk = sketch_file(path, hub.config, partition_size=partition_size, sep=sep, device=hub.device, bar=bar)
        if bar is not None:
            if bar.total:
                bar.update(max(0, bar.total - bar.n))
            bar.set_description("adding (writing)")
        entry = hub.add_sketch(name, sk, metadata=metadata)
        if bar is not None:
            bar.set_description("added")
        return entry
    finally:
        if bar is not None:
            bar.close()
