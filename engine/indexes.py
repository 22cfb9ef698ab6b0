"""The hub's in-memory search indexes, one component the Hub holds: the profile index
(engine/profiles.py) and the screen index (engine/screen.py), each brought to the hub's current
generation before use. Entries stored without a profile or screen record (older hubs) are
computed from their histograms."""
from __future__ import annotations

from . import profiles as _profiles
from . import screen as _screen
from .partitions import unpack_hist
from .storage import u64


class SearchIndexes:
    def __init__(self, config, device: str):
        self._config, self._device = config, device
        self._profiles: _profiles.ProfileIndex | None = None
        self._screen: _screen.ScreenIndex | None = None

    def profile_index(self) -> _profiles.ProfileIndex:
        """The profile index as it is (not synced)."""
        if self._profiles is None:
            self._profiles = _profiles.ProfileIndex()
        return self._profiles

    def profiles(self, store, *, build_index: bool = False) -> _profiles.ProfileIndex:
        """The in-memory profile index, brought to the hub's current generation."""
        idx = self.profile_index()
        config, device = self._config, self._device
        with store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eid):
                rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                hist = None if hist is None else unpack_hist(hist)
                return None if rec is None or hist is None else _profiles.record(
                    hist, rec["features"], rec["n_partitions"], config, device)[0]

            idx.sync(txn, gen, missing)
        if build_index:
            idx.build()
        return idx

    def screen(self, store) -> _screen.ScreenIndex:
        """The in-memory screen index, brought to the hub's current generation."""
        config, device = self._config, self._device
        if self._screen is None:
            self._screen = _screen.ScreenIndex(int(config.jslsh_l), config.hist_accuracy)
        idx = self._screen
        with store.read() as txn:
            gen = int(txn.get("meta", b"generation") or 0)

            def missing(eid):
                rec, hist = txn.get("entries", u64(eid)), txn.get("histograms", u64(eid))
                if rec is None or hist is None:
                    return None
                hist = unpack_hist(hist)
                keys = txn.get("extra", _profiles.keys_key(eid)) or _profiles.record(
                    hist, rec["features"], rec["n_partitions"], config, device)[1]
                return _screen.record(hist, rec["features"], rec["sums"], rec["counts"], config.seed), keys

            idx.sync(txn, gen, missing)
        return idx
