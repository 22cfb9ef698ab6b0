"""The README, followed literally, works: every ```python block and every `$ fitsketch ...` /
`$ python -m fitsketch...` command of README.md runs, in document order, in one empty temporary
directory (as a new user would run them), and none raises or exits non-zero.

Python blocks run in this process (each in a fresh namespace; PyTorch is imported once), `fitsketch`
commands through ``fitsketch.cli.main`` (the console script's entry point; the installed script
itself is run by `make install-check`), `python -m ...` commands as subprocesses, and a command
ending in `&` (the server) in the background until the end.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")


def snippets(text: str) -> list[tuple[str, int, str]]:
    """``(kind, line, code)`` in document order: kind "python" (a whole ```python block) or "cmd"
    (a `$ fitsketch ...` / `$ python -m fitsketch...` line of any other block)."""
    out, lang, start, buf = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip()) if line.startswith("```") else None
        if lang is None:
            if m:
                lang, start, buf = m.group(1), i, []
            continue
        if line.strip() == "```":
            if lang == "python":
                out.append(("python", start, "\n".join(buf) + "\n"))
            lang = None
            continue
        buf.append(line)
        s = line.strip()
        if lang != "python" and (s.startswith("$ fitsketch") or s.startswith("$ python -m fitsketch")):
            out.append(("cmd", i, s[2:]))
    assert lang is None, f"README.md: the block opened at line {start} is never closed"
    return out


def test_extraction_finds_blocks_and_commands():
    text = "intro\n```python\nx = 1\n```\n```console\n$ fitsketch init a.hub\n$ ls\n$ fitsketch serve a.hub &\n```\n" \
           "```text\nnot run\n```\n```bash\nfitsketch show a.hub   # reference, no prompt\n```\n"
    assert snippets(text) == [("python", 2, "x = 1\n"), ("cmd", 6, "fitsketch init a.hub"),
                              ("cmd", 8, "fitsketch serve a.hub &")]
    got = snippets(README.read_text())
    assert sum(k == "python" for k, *_ in got) >= 6 and sum(k == "cmd" for k, *_ in got) >= 6


def _fitsketch_cmd() -> list[str]:
    script = Path(sys.executable).parent / "fitsketch"
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from fitsketch.cli import main; sys.exit(main())"]


def _wait_for_socket(hub: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    sock = hub / "fitsketch.sock"
    t0 = time.monotonic()
    while not sock.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the background server exited with {proc.returncode}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no socket {sock} after {timeout} s")
        time.sleep(0.2)


def test_readme_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")       # the quick start's models ([bench] extra, as the README says)
    pytest.importorskip("matplotlib")    # explain(...).plot() and --png ([plot] extra)
    from fitsketch.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    background = []
    try:
        for kind, line, code in snippets(README.read_text()):
            where = f"README.md:{line}"
            if kind == "python":
                try:
                    exec(compile(code, where, "exec"), {"__name__": "__readme__"})
                except Exception as e:  # noqa: BLE001 - report which snippet failed, then fail
                    raise AssertionError(f"{where}: the python block raised {type(e).__name__}: {e}") from e
                continue
            argv = shlex.split(code)
            bg = argv[-1] == "&"
            argv = argv[:-1] if bg else argv
            if argv[0] == "fitsketch" and not bg:
                rc = cli_main(argv[1:])
                assert rc == 0, f"{where}: `{code}` exited with {rc}"
            elif argv[0] == "fitsketch":
                proc = subprocess.Popen(_fitsketch_cmd() + argv[1:], env=env)
                background.append(proc)
                _wait_for_socket(tmp_path / argv[2], proc)
            else:
                assert argv[:2] == ["python", "-m"], f"{where}: unexpected command {code!r}"
                r = subprocess.run([sys.executable] + argv[1:], env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, f"{where}: `{code}` exited with {r.returncode}: {r.stderr[-2000:]}"
        for proc in background:
            assert proc.poll() is None, "the background server stopped before the end of the README"
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    # what the README says it writes
    for png in ("why.png", "matches.png", "why-cli.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
