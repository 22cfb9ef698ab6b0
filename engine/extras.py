"""Optional dependencies and the extra that installs each.

scikit-learn and matplotlib are not needed to sketch, store or search: they serve the demo and
the benchmark workloads (``pip install 'fitsketch[bench]'``) and the pictures
(``pip install 'fitsketch[plot]'``). A feature that needs one calls :func:`require` first, so a
missing package is a :class:`fitsketch.errors.MissingDependencyError` naming the extra, not a bare
``ModuleNotFoundError`` from deep inside.
"""
from __future__ import annotations

from .errors import MissingDependencyError

EXTRAS = {"sklearn": ("scikit-learn", "bench"), "matplotlib": ("matplotlib", "plot")}


def require(module: str, purpose: str):
    """Import ``module`` (a key of EXTRAS) or raise MissingDependencyError naming its extra."""
    package, extra = EXTRAS[module]
    try:
        if module == "sklearn":
            import sklearn as mod
        else:
            import matplotlib as mod
        return mod
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs {package}, which is not installed: pip install 'fitsketch[{extra}]' "
            f"(or pip install {package})") from None
