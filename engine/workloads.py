"""Moved to ``fitsketch.contrib.workloads``; this old import path is the same module."""
import sys

from .contrib import workloads as _module

sys.modules[__name__] = _module
