"""``auto`` (the default): predicted accuracy (engine/methods/accuracy.py) for the entries
registered with labels, the label-free default (``LABEL_FREE``, coverage) for the others,
ranked after them; on a hub without labelled entries it scores, and is screened, exactly as the
label-free default."""
from __future__ import annotations

from .accuracy import LABEL_FREE, Accuracy
from .base import NO_SHORTLIST


class Auto(Accuracy):
    name = "auto"
    auto = True
    shortlist = NO_SHORTLIST   # never screened as itself: as ``screened_as`` says


    def screened_as(self, has_labelled) -> str:
        return "accuracy" if has_labelled() else LABEL_FREE


AUTO = Auto()
