#!/usr/bin/env bash
# `make install-check`: `pip install .` works for a user. Installs a copy of the checkout (tracked and
# untracked-but-not-ignored files, so the checkout itself gets no build/ or *.egg-info) into a fresh,
# throwaway virtualenv, then runs the installed `fitsketch` command and package from outside the
# source tree: --version, the example data, init / add --labels / search --json / show.
# The package is installed with --no-deps (its build: setuptools from the registry in pip's isolated
# build env, the C MinHash kernel, the package-dir mapping, the console script); its runtime
# dependencies are then borrowed from $PY's environment through a .pth file, because `make test`
# has just resolved and installed them there (re-downloading PyTorch would cost CI minutes).
set -euo pipefail
PY=${PY:-.venv/bin/python}
SRC=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# files added to the checkout (untracked or ignored), the way a build in the tree would add build/ or *.egg-info
state() { git -C "$SRC" status --porcelain --ignored --untracked-files=all 2>/dev/null | grep -e '^??' -e '^!!' | grep -v -e '__pycache__' -e '\.pytest_cache' || true; }
before=$(state)
mkdir "$tmp/src"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$SRC" && git ls-files -z -co --exclude-standard | tar --null -cf - -T -) | tar -xf - -C "$tmp/src"
else
  tar -C "$SRC" --exclude=.venv --exclude=build --exclude='*.egg-info' -cf - . | tar -xf - -C "$tmp/src"
fi
base=$("$PY" -c 'import sys; print(sys.base_prefix)')/bin/python3
"$base" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --no-deps "$tmp/src"
"$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' > \
  "$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_fitsketch_deps.pth"
cd "$tmp"
export OMP_NUM_THREADS=1
got=$("$tmp/venv/bin/python" -c 'import fitsketch, fitsketch.kernels, fitsketch.storage; print(fitsketch.__file__)')
case "$got" in "$tmp/venv/"*) ;; *) echo "install-check: fitsketch imported from $got, not the fresh install" >&2; exit 1;; esac
if command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; then   # the optional C kernel was built
  "$tmp/venv/bin/python" -c 'import fitsketch.kernels._cminhash'
fi
"$tmp/venv/bin/fitsketch" --version
"$tmp/venv/bin/python" -m fitsketch.datasets data >/dev/null
"$tmp/venv/bin/fitsketch" init h.hub
"$tmp/venv/bin/fitsketch" add h.hub model-a data/model-a.csv --labels label --quiet
"$tmp/venv/bin/fitsketch" add h.hub model-b data/model-b.csv --labels label --quiet
"$tmp/venv/bin/fitsketch" search h.hub data/query.csv -k 2 --json > search.json
"$tmp/venv/bin/python" - <<'PY'
import json
res = json.load(open("search.json"))
assert [r["name"] for r in res] == ["model-b", "model-a"], res
assert res[0]["method"] == "accuracy" and 0.0 <= res[1]["score"] < res[0]["score"] <= 1.0, res
print(f"install-check: pip install . OK ({res[0]['name']} ranks first, predicted accuracy {res[0]['score']:.3f})")
PY
# the checkout is as it was: no build/, *.egg-info or any other file added, even ignored ones
if [ "$(state)" != "$before" ]; then
  echo "install-check: the checkout changed:" >&2; diff <(echo "$before") <(state) >&2 || true; exit 1
fi
