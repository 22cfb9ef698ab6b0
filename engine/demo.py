"""Moved to ``fitsketch.contrib.demo``; this old import path is the same module."""
import sys

from .contrib import demo as _module

sys.modules[__name__] = _module
