"""fitsketch: which of the models you already have will work best on your data?

    import fitsketch
    with fitsketch.open("zoo.hub") as hub:
        hub.add("model-a", train_a, metadata={"accuracy": 0.91})
        hub.search(my_data, k=5, method="adaptivity")

Importing ``fitsketch`` loads no PyTorch: ``Hub``, ``Entry``, ``Match`` and ``Sketch`` are
imported on first use (so ``fitsketch --help`` starts fast).

No public function shares its name with a module: ``import fitsketch.sketch as sk`` is the
module (the ``Sketch`` class), ``fitsketch.sketch_data(df)`` builds a sketch, and
``fitsketch.minhash_sets(sets)`` computes MinHash signatures (``fitsketch.minhash`` is the
feature-overlap module).
"""
from __future__ import annotations

import os

from . import errors
from .config import SketchConfig
from .errors import FitsketchError

__version__ = "0.1.0"

_LAZY = {"Hub": "hub", "Entry": "results", "Match": "results", "Sketch": "sketch", "build_sketch": "sketch",
         "METHODS": "config"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod == "hub":
        from . import hub as module
    elif mod == "sketch":
        from . import sketch as module
    elif mod == "results":
        from . import results as module
    elif mod == "config":   # METHODS: the method registry's names (engine/methods/)
        from . import config as module
    else:
        raise AttributeError(f"module 'fitsketch' has no attribute {name!r}")
    value = getattr(module, name)
    if name != "METHODS":   # METHODS is read from the registry each time: methods registered later count
        globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

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
    "minhash_sets",
    "open",
    "open_sharded",
    "sketch_data",
]


def open(path: str | os.PathLike, create: bool = True, *, config: SketchConfig | None = None,
         readonly: bool = False, device: str = "auto") -> "Hub":  # noqa: A001 - the documented name
    """Open (or create) the hub at ``path``."""
    from .hub import Hub

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


def sketch_data(data, config: SketchConfig | None = None, *, partition_size: int | None = None,
                feature_names=None, device: str = "auto", coverage_center=None, labels=None) -> "Sketch":
    """Sketch ``data`` without a hub (mergeable; register later with ``hub.add_sketch``).
    ``labels`` (one per row, or a column's name) add class-conditional histograms for
    ``method="accuracy"``.

    (Named ``sketch_data``, not ``sketch``: ``fitsketch.sketch`` is the module of the ``Sketch``
    class, and a function of the same name would hide it from ``import fitsketch.sketch``.)"""
    from .accuracy import class_record, with_labels
    from .sketch import build_sketch

    config = config or SketchConfig()
    frame, labels = with_labels(data, labels, feature_names)
    sk = build_sketch(frame, config, partition_size=partition_size, device=device, coverage_center=coverage_center)
    if labels is not None:
        sk.classes = class_record(frame, labels, sk.names, sk.kinds, config)
    return sk


def minhash_sets(sets, num_perm: int = 128, seed: int = 0, device: str = "auto", family: str = "ms64"):
    """MinHash signatures ``(len(sets), num_perm)`` uint32 of many sets of str / bytes / ints
    (``family``: "ms64" multiply-shift, or "mod61" to compare with a hub created before families).

    (Named ``minhash_sets``, not ``minhash``: ``fitsketch.minhash`` is the feature-overlap module.)"""
    from .kernels.minhash import minhash as _kernel_minhash

    try:
        return _kernel_minhash(sets, num_perm=num_perm, seed=seed, device=device, family=family)
    except Exception as e:
        raise errors.translate(e) from None
