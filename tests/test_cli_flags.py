"""The command line covers the API: add's --labels / --autoencoder / --image-shape / --embedding /
--metadata / --sep, --version, help text with defaults on every option, one-line errors with exit
status 2, messages in command-line terms, and a --help that loads no PyTorch."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fitsketch
from fitsketch.cli import build_parser, cli_terms


def _subparsers(p: argparse.ArgumentParser, prefix="fitsketch"):
    yield prefix, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _subparsers(sp, f"{prefix} {name}")


def test_every_option_has_help_and_shows_its_default():
    seen = 0
    for prog, p in _subparsers(build_parser()):
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            seen += 1
            assert a.help and a.help.strip(), f"{prog} {a.option_strings or a.dest}: no help text"
            text = fmt._get_help_string(a) % {"default": a.default, "prog": prog}
            if a.option_strings and a.nargs != 0:     # an option that takes a value says its default
                assert "default" in text.lower(), f"{prog} {a.option_strings}: no default in {text!r}"
                if a.default is not None and "%(default)" not in (a.help or "") and "default:" not in a.help:
                    assert str(a.default) in text, f"{prog} {a.option_strings}: {text!r}"
    assert seen > 60


def test_version_and_help_exit_0(run):
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"fitsketch {fitsketch.__version__}"
    code, out, _ = run("add", "--help")
    assert code == 0 and "--labels" in out and "--autoencoder" in out and "Python-only" in out


def test_help_and_import_load_no_torch():
    """`fitsketch --help` and `import fitsketch` (and its errors) import no PyTorch: startup stays fast."""
    code = ("import sys, contextlib, io\n"
            "import fitsketch, fitsketch.errors\n"
            "assert 'torch' not in sys.modules, 'import fitsketch loaded torch'\n"
            "from fitsketch.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = main(['--help'])\n"
            "assert rc == 0\n"
            "assert 'torch' not in sys.modules, '--help loaded torch'\n"
            "fitsketch.Hub\n"
            "assert 'torch' in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args,needle", [
    (("search", "{hub}", "{csv}", "--method", "nope"), "invalid choice: 'nope'"),
    (("search", "{hub}", "{csv}", "-k", "x"), "invalid int value"),
    (("add", "{hub}", "x", "{csv}", "--no-such-flag"), "unrecognized arguments"),
    (("frobnicate",), "invalid choice"),
    (("add", "{hub}", "x", "{csv}", "--image-shape", "1,2", "--autoencoder"), "C,H,W"),
    (("add", "{hub}", "x", "{csv}", "--image-shape", "1,2,2"), "--autoencoder"),
    (("add", "{hub}", "x", "{csv}", "--sep", ";;"), "--sep"),
])
def test_bad_arguments_are_one_line_with_exit_2(tmp_path, run, args, needle):
    hub = tmp_path / "hub"
    run("init", hub)
    csv = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}).to_csv(csv, index=False)
    code, out, err = run(*[a.format(hub=hub, csv=csv) for a in args], check=False)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("fitsketch: error [") and needle in lines[0] and "usage:" not in err
    assert out == ""


def test_cli_terms_maps_python_advice_to_flags():
    assert cli_terms("no hub at x; create it with create=True") == "no hub at x; create it with `fitsketch init HUB`"
    assert cli_terms("no entry named 'a' in hub h: see hub.names()") == "no entry named 'a' in hub h: see `fitsketch show HUB`"
    got = cli_terms("labels are used by the SimEx autoencoders: pass autoencoder=True too")
    assert "autoencoder=True" not in got and "--autoencoder" in got
    got = cli_terms("method='coverage' with coverage_space='embedding' ... pass embedding=(n, d), "
                    "pass coverage_fallback=True to fall back, filter entries with where=")
    for py in ("method=", "coverage_space=", "embedding=(", "coverage_fallback=", "where="):
        assert py not in got, (py, got)
    for flag in ("--method coverage", "--coverage-space embedding", "--embedding FILE.npy", "--coverage-fallback",
                 "--where"):
        assert flag in got, (flag, got)
    assert cli_terms("nothing to change") == "nothing to change"


def test_engine_errors_print_in_command_line_terms(tmp_path, run):
    hub = tmp_path / "hub"
    run("init", hub)
    csv = tmp_path / "d.csv"
    pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 3}).to_csv(csv, index=False)
    run("add", hub, "plain", csv)
    code, _, err = run("search", hub, csv, "--method", "simex", check=False)
    assert code == 2 and "--autoencoder" in err and "autoencoder=True" not in err, err
    code, _, err = run("show", hub, "nope", check=False)
    assert code == 2 and "fitsketch show HUB" in err and "hub.names()" not in err


def test_sep_sniffed_explicit_and_one_column_warning(rng, tmp_path, run):
    df = pd.DataFrame({"a": rng.normal(size=60), "b": rng.choice(["x", "y"], 60), "c": rng.integers(0, 9, 60)})
    semi = tmp_path / "semi.csv"
    df.to_csv(semi, sep=";", index=False)
    comma = tmp_path / "comma.csv"
    df.to_csv(comma, index=False)
    hub = tmp_path / "hub"
    run("init", hub)
    auto = json.loads(run("add", hub, "auto", semi, "--json")[1])
    assert auto["features"] == ["a", "b", "c"]
    explicit = json.loads(run("add", hub, "explicit", semi, "--sep", ";", "--json")[1])
    assert explicit["features"] == ["a", "b", "c"]
    code, out, err = run("add", hub, "wrong", semi, "--sep", ",", "--json")
    assert json.loads(out)["features"] == ["a;b;c"]
    assert err.count("\n") == 1 and "warning" in err and "--sep ';'" in err
    with fitsketch.open(hub, create=False) as h:
        ref = fitsketch.sketch_data(comma, h.config)
        with h.store.read() as txn:
            for name in ("auto", "explicit"):
                stored = fitsketch.signature_records.decode(txn.get("signatures", fitsketch.storage.u64(h.get(name).id)))
                assert np.array_equal(stored, ref.signatures)


def test_add_labels_autoencoder_image_shape_embedding_metadata(rng, tmp_path, run):
    """`add --labels COL --autoencoder --image-shape C,H,W --embedding F --metadata J` registers what
    hub.add(labels=, autoencoder=True, image_shape=, embedding=, metadata=) registers."""
    n = 90
    y = rng.integers(0, 3, n)
    X = rng.random((n, 16)) + y[:, None] * 0.5      # 1 x 4 x 4 images, three classes
    df = pd.DataFrame(X, columns=[f"p{i}" for i in range(16)])
    df["digit"] = y
    csv = tmp_path / "img.csv"
    df.to_csv(csv, index=False)
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    hub = tmp_path / "hub"
    run("init", hub, "--partition-size", "30")
    e = json.loads(run("add", hub, "cli", csv, "--labels", "digit", "--autoencoder", "--image-shape", "1,4,4",
                       "--embedding", tmp_path / "emb.npy", "--metadata", '{"task": "digits"}', "--json")[1])
    assert e["metadata"] == {"task": "digits"} and "digit" not in e["features"] and len(e["features"]) == 16
    with fitsketch.open(hub, create=False) as h:
        h.add("py", pd.read_csv(csv), labels="digit", autoencoder=True, image_shape=(1, 4, 4), embedding=emb,
              metadata={"task": "digits"})
        from fitsketch.hub import _AE_PREFIX

        with h.store.read() as txn:
            ka, kb = (fitsketch.storage.u64(h.get(n).id) for n in ("cli", "py"))
            fa, fb = txn.get("weights", _AE_PREFIX + ka)["simex"], txn.get("weights", _AE_PREFIX + kb)["simex"]
            ea, eb = txn.get("extra", ka) or {}, txn.get("extra", kb) or {}
    assert len(fa) == len(fb) == 3                     # one autoencoder per class
    assert [r.get("label") for r in fa] == [r.get("label") for r in fb]
    assert "coverage_embedding" in ea and sorted(ea) == sorted(eb)
    # the entry is usable by the methods these flags exist for
    q = df.drop(columns=["digit"]).iloc[:40]
    qcsv = tmp_path / "q.csv"
    q.to_csv(qcsv, index=False)
    res = json.loads(run("search", hub, qcsv, "--method", "simex", "--json")[1])
    assert {r["name"] for r in res} == {"cli", "py"}
    np.save(tmp_path / "qemb.npy", emb[:40])
    res = json.loads(run("search", hub, qcsv, "--method", "coverage", "--coverage-space", "embedding",
                         "--embedding", tmp_path / "qemb.npy", "--json")[1])
    by = {r["name"]: r["score"] for r in res}
    assert set(by) == {"cli", "py"} and by["cli"] == pytest.approx(by["py"])
