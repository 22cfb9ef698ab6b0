"""The registry of search methods: ``method=`` name -> a ``Method`` (engine/methods/base.py).

One module per method family: jslsh (adaptivity, js), exact (exact-js, l2), coverage (with its
spaces), simex, accuracy, auto. The pipeline, the planner, the sharded hub and ``fitsketch.METHODS``
ask this registry; nothing else compares method names. A new method is one new module defining a
``Method`` subclass plus one line in ``_BUILTIN`` below (or, from outside the package,
``register(MyMethod())``).
"""
from __future__ import annotations

from importlib import import_module

from .. import errors as E
from .base import EMBEDDINGS, HISTOGRAMS, LABELS, NO_SHORTLIST, ROWS, Method, Query, ScoreContext, ShortlistRule

# the built-in methods, in the order fitsketch.METHODS lists them: name -> the loader of its object,
# imported when the method is first asked for (``fitsketch --help`` loads no scorer)
_BUILTIN = {
    "auto": lambda: import_module("fitsketch.methods.auto").AUTO,
    "accuracy": lambda: import_module("fitsketch.methods.accuracy").ACCURACY,
    "adaptivity": lambda: import_module("fitsketch.methods.jslsh").ADAPTIVITY,
    "coverage": lambda: import_module("fitsketch.methods.coverage").COVERAGE,
    "js": lambda: import_module("fitsketch.methods.jslsh").JS_METHOD,
    "exact-js": lambda: import_module("fitsketch.methods.exact").EXACT_JS,
    "l2": lambda: import_module("fitsketch.methods.exact").L2_METHOD,
    "simex": lambda: import_module("fitsketch.methods.simex").SIMEX,
}

_REGISTRY: dict = dict(_BUILTIN)   # name -> Method, or the loader of a built-in one not imported yet


def register(method: Method) -> Method:
    """Add ``method`` under ``method.name`` (a new name; returns it, so it can decorate an instance)."""
    if not isinstance(method, Method) or not isinstance(method.name, str) or not method.name:
        raise E.InvalidArgumentError(f"{method!r} is not a Method with a name")
    if method.name in _REGISTRY:
        raise E.InvalidArgumentError(f"a method named {method.name!r} is registered: choose another name")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with ``register`` (the built-in ones stay)."""
    if name in _BUILTIN:
        raise E.InvalidArgumentError(f"{name!r} is a built-in method")
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name) -> Method:
    """The method called ``name``; UnknownMethodError naming the known ones otherwise."""
    m = find(name)
    if m is None:
        raise E.UnknownMethodError(f"method={name!r} is not a search method: use one of {', '.join(_REGISTRY)}")
    return m


def find(name) -> Method | None:
    """The method called ``name``, or None."""
    m = _REGISTRY.get(name) if isinstance(name, str) else None
    if m is not None and not isinstance(m, Method):   # a built-in one, not imported yet
        m = _REGISTRY[name] = m()
        assert m.name == name, (m, name)
    return m


def methods() -> list[Method]:
    """Every registered method (importing the built-in ones)."""
    return [find(n) for n in names()]

__all__ = ["EMBEDDINGS", "HISTOGRAMS", "LABELS", "NO_SHORTLIST", "ROWS", "Method", "Query", "ScoreContext",
           "ShortlistRule", "find", "get", "methods", "names", "register", "unregister"]
