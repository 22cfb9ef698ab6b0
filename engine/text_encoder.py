"""Moved to ``fitsketch.contrib.text_encoder``; this old import path is the same module."""
import sys

from .contrib import text_encoder as _module

sys.modules[__name__] = _module
