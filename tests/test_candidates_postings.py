"""The MinHash candidate stage reads each band's postings as one array (band_blocks.delta_ids):
equal to reading them one ``int.from_bytes`` at a time, for 4- and 8-byte postings (and a band
holding both), and a posting of another width is a named error."""
from __future__ import annotations

import numpy as np
import pytest

from fitsketch import errors as E
from fitsketch.band_blocks import delta_ids as _posting_ids


def _reference(dups):
    return [int.from_bytes(v[:4], "big") for v in dups]


@pytest.mark.parametrize("n", [1, 7, 97, 4099])
@pytest.mark.parametrize("widths", [(4,), (8,), (4, 8)])
def test_posting_ids_equal_the_per_posting_read(n, widths):
    rng = np.random.default_rng([n, len(widths)])
    dups = [int(rng.integers(0, 1 << 32)).to_bytes(4, "big") + (b"" if w == 4 else
                                                                 int(rng.integers(0, 1 << 32)).to_bytes(4, "big"))
            for w in rng.choice(widths, n)]
    got = _posting_ids(dups)
    assert got.dtype == np.int64
    assert got.tolist() == _reference(dups)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 3, b"\x00" * 5, b"\x00" * 12])
def test_a_posting_of_another_width_is_corruption(bad):
    with pytest.raises(E.CorruptHubError, match="band posting"):
        _posting_ids([b"\x00" * 4, bad])
