"""``auto`` (the default): predicted accuracy (engine/methods/accuracy.py) for the entries
registered with labels, the label-free default (``LABEL_FREE``, coverage) for the others,
ranked after them; on a hub without labelled entries it scores, and is screened, exactly as the
label-free default."""
from __future__ import annotations

from .accuracy import Accuracy, label_free
from .base import NO_SHORTLIST


class Auto(Accuracy):
    name = "auto"
    auto = True
    shortlist = NO_SHORTLIST   # never screened as itself: as ``screened_as`` says


    def screened_as(self, has_labelled, query, cfg) -> str:
        """As it will score: "accuracy" when the hub holds labelled entries and the query brings its
        rows or mixture, otherwise the label-free method for this query (``label_free``)."""
        if (query.frame is not None or query.mixture is not None) and has_labelled():
            return "accuracy"
        return label_free(query, cfg)[0]


AUTO = Auto()
