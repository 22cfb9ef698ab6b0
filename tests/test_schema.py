"""The hub's on-disk schema (storage/schema.py): every record format constant is listed there with
its value, every database is described, an entry's parts leave nothing behind when it is removed,
a hub of the previous format (1) opens read-only as it is and is upgraded on a writable open, and
a newer format is refused at open."""
import ast
import importlib
import logging
import pathlib
import re

import pandas as pd
import pytest

import _hubcheck as hc

import fitsketch
from fitsketch.errors import SchemaError
from fitsketch.storage import DBS, FORMAT_VERSION, schema

ROOT = pathlib.Path(fitsketch.__file__).parent
STORAGE = pathlib.Path(fitsketch.storage.__file__).parent


def _format_constants():
    """{"fitsketch.module.NAME": value} of every module-level ``*_FORMAT`` / ``FORMAT_VERSION`` int."""
    out = {}
    for pkg, root in (("fitsketch", ROOT), ("fitsketch.storage", STORAGE)):
        for f in sorted(root.rglob("*.py")):
            if pkg == "fitsketch" and STORAGE in f.parents:
                continue
            mod = ".".join([pkg] + list(f.relative_to(root).with_suffix("").parts))
            for node in ast.parse(f.read_text()).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    name = node.targets[0].id
                    if re.fullmatch(r"[A-Z_]*FORMAT(_VERSION)?", name) and isinstance(node.value, ast.Constant) \
                            and isinstance(node.value.value, int):
                        out[f"{mod}.{name}"] = node.value.value
    return out


def test_every_record_format_has_a_schema_entry():
    found = _format_constants()
    assert len(found) >= 14     # the scan finds them (FORMAT_VERSION, ENTRY_FORMAT, HIST_FORMAT, ...)
    listed = schema.formats()
    assert found == listed, ("a record format constant changed or appeared without a storage/schema.py entry: "
                             f"only in the code {set(found.items()) - set(listed.items())}, only in the schema "
                             f"{set(listed.items()) - set(found.items())}")
    for name, v in listed.items():   # the listed values are the live ones
        mod, attr = name.rsplit(".", 1)
        assert getattr(importlib.import_module(mod), attr) == v


def test_every_database_is_described():
    assert set(schema.databases()) == set(DBS)
    for r in schema.SCHEMA:
        assert r.key and r.record and r.owner


def _frame(rng, n):
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 5, n).astype(str)})


def _dump(hub):
    with hub.store.read() as txn:
        return {db: sorted(txn.keys(db)) for db in DBS if db != "meta"}


def test_an_entry_removed_leaves_no_key_of_any_part(tmp_path, rng):
    with fitsketch.open(tmp_path / "h") as hub:
        hub.add("keep", _frame(rng, 80))
        before = _dump(hub)
        hub.add("gone", _frame(rng, 90), labels=rng.integers(0, 3, 90), embedding=rng.normal(size=(90, 4)),
                autoencoder=True)
        during = _dump(hub)
        for db in ("entries", "names", "signatures", "histograms", "bands", "extra", "weights", "embeddings"):
            assert len(during[db]) > len(before[db]), db      # every part wrote something
        hub.remove("gone")
        assert _dump(hub) == before
        with hub.store.read() as txn:
            assert not any((txn.get("meta", b"label_kinds") or {}).values())




def test_a_format_1_hub_opens_as_it_is_read_only_and_is_upgraded_writable(tmp_path, rng, caplog):
    assert FORMAT_VERSION == 6
    path = tmp_path / "h"
    q = _frame(rng, 60)
    with fitsketch.open(path) as hub:
        for i in range(4):
            hub.add(f"e{i}", _frame(rng, 100 + 10 * i))
        want = [(m.name, m.score) for m in hub.search(q, k=4, method="exact-js")]
    hc.set_format(path, 1)
    with fitsketch.open(path, readonly=True) as hub:      # read as it is, not written
        assert [(m.name, m.score) for m in hub.search(q, k=4, method="exact-js")] == want
    assert fitsketch.inspect(path)["format"] == 1
    with caplog.at_level(logging.WARNING, logger="fitsketch.storage.env"):
        with fitsketch.open(path) as hub:
            assert [(m.name, m.score) for m in hub.search(q, k=4, method="exact-js")] == want
    assert any("from format 1 to 6" in r.getMessage() for r in caplog.records)
    info = fitsketch.inspect(path)
    assert info["format"] == 6 and info["record_formats"] == schema.formats()
    assert info["record_formats"]["fitsketch.partitions.HIST_FORMAT"] == 2


@pytest.mark.parametrize("readonly", [False, True])
def test_a_newer_format_is_refused_at_open(tmp_path, rng, readonly):
    path = tmp_path / "h"
    with fitsketch.open(path) as hub:
        hub.add("e", _frame(rng, 50))
    hc.set_format(path, FORMAT_VERSION + 1)
    with pytest.raises(SchemaError, match=f"format {FORMAT_VERSION + 1}"):
        fitsketch.open(path, readonly=readonly)
