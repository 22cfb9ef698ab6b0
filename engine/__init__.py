"""fitsketch: which of the models you already have will work best on your data?

    import fitsketch
    with fitsketch.open("zoo.hub") as hub:
        hub.add("model-a", train_a, metadata={"accuracy": 0.91})
        hub.search(my_data, k=5, method="adaptivity")
"""
from __future__ import annotations

import os

from . import errors
from .config import METHODS, SketchConfig
from .errors import FitsketchError
from .hub import Entry, Hub, Match
from .kernels.minhash import minhash as _kernel_minhash
from .sketch import Sketch, build_sketch

__version__ = "0.1.0"

__all__ = [
    "Entry",
    "FitsketchError",
    "Hub",
    "METHODS",
    "Match",
    "Sketch",
    "SketchConfig",
    "__version__",
    "connect",
    "errors",
    "inspect",
    "minhash",
    "open",
    "open_sharded",
    "sketch",
]


def open(path: str | os.PathLike, create: bool = True, *, config: SketchConfig | None = None,
         readonly: bool = False, device: str = "auto") -> Hub:  # noqa: A001 - the documented name
    """Open (or create) the hub at ``path``."""
    return Hub(path, create=create, config=config, readonly=readonly, device=device)


def connect(address, *, timeout: float = 30.0, token: str | None = None, remote_paths: bool = False):
    """A client of the server at ``address`` (a socket path, ``tcp://127.0.0.1:PORT``, or a hub
    directory: its server if one runs there, else the hub opened embedded). Same methods as Hub."""
    from .client import connect as _connect

    return _connect(address, timeout=timeout, token=token, remote_paths=remote_paths)


def open_sharded(addresses, **kwargs):
    """A hub sharded by entry name over several hub paths or server addresses (fitsketch.sharded)."""
    from .sharded import open_sharded as _open_sharded

    return _open_sharded(addresses, **kwargs)


def inspect(path: str | os.PathLike) -> dict:
    """A hub's header (format, seeds, sketch parameters, counts) without loading anything else."""
    from .storage import inspect as _inspect

    try:
        return _inspect(path)
    except Exception as e:
        raise errors.translate(e) from None


def sketch(data, config: SketchConfig | None = None, *, partition_size: int | None = None,
           feature_names=None, device: str = "auto", coverage_center=None, labels=None) -> Sketch:
    """Sketch ``data`` without a hub (mergeable; register later with ``hub.add_sketch``).
    ``labels`` (one per row, or a column's name) add class-conditional histograms for
    ``method="accuracy"``."""
    from .accuracy import with_labels

    config = config or SketchConfig()
    frame, labels = with_labels(data, labels, feature_names)
    sk = build_sketch(frame, config, partition_size=partition_size, device=device, coverage_center=coverage_center)
    if labels is not None:
        from .accuracy import class_record

        sk.classes = class_record(frame, labels, sk.names, sk.kinds, config)
    return sk


def minhash(sets, num_perm: int = 128, seed: int = 0, device: str = "auto", family: str = "ms64"):
    """MinHash signatures ``(len(sets), num_perm)`` uint32 of many sets of str / bytes / ints
    (``family``: "ms64" multiply-shift, or "mod61" to compare with a hub created before families)."""
    try:
        return _kernel_minhash(sets, num_perm=num_perm, seed=seed, device=device, family=family)
    except Exception as e:
        raise errors.translate(e) from None
