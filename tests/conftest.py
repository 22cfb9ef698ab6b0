"""Shared test setup.

``TRITON_INTERPRET=1`` is set before anything imports Triton, so every Triton kernel runs on CPU
tensors through Triton's interpreter and is compared with its NumPy reference (set
``TRITON_INTERPRET=0`` on a GPU machine to test the compiled kernels instead).
"""
import os
import typing

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# `make test` runs two pytest workers on two cores: one intra-op thread each, or their OpenMP
# thread pools fight over the cores (small int64 kernels measured 10x slower that way)
torch.set_num_threads(1)


@pytest.fixture
def rng(request):
    """A generator with a fresh seed on every run; a failing test's report names the seed (a section
    "rng seed" beside the traceback; replay with ``np.random.default_rng(seed)``)."""
    seed = int(np.random.SeedSequence().entropy) % (1 << 63)
    print(f"rng seed: {seed}")
    request.node.stash[RNG_SEED] = seed
    return np.random.default_rng(seed)


RNG_SEED = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(RNG_SEED, None)
    if seed is not None and report.failed:
        report.sections.append(("rng seed", f"this test drew its data with np.random.default_rng({seed})"))


class CliResult(typing.NamedTuple):
    """What one in-process CLI run returned and printed: unpacks as ``code, out, err``."""
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys):
    """Run the CLI in this process (as `fitsketch ...` does) and capture what it prints; a non-zero
    exit raises unless ``check=False`` (test_cli.py, test_cli_flags.py)."""
    from fitsketch.cli import main

    def _run(*args, check=True):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"exit {code}: {err}")
        return CliResult(code, out, err)
    return _run
