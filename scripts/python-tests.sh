#!/usr/bin/env bash
# The Python package's tests: builds bbt's binaries and a wheel of the package (maturin, in the
# dev profile so it shares cargo's build of the workspace), installs the wheel into a cached
# virtual environment with pytest, pycma and tqdm, and runs python/tests against a bbt-server
# on the real default model.
#
#   scripts/python-tests.sh [PYTEST ARGS...]
#
# BBT_PY_VENV overrides the environment's folder (default ~/.cache/bbt/py-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${BBT_PY_VENV:-$HOME/.cache/bbt/py-venv}"
if [ ! -x "$venv/bin/python" ]; then
    # Debian's python3 keeps the venv module in a package of its own: virtualenv from the
    # package index does the same job.
    python3 -m venv "$venv" 2>/dev/null || {
        rm -rf "$venv"
        python3 -m pip install --quiet --disable-pip-version-check --user virtualenv
        python3 -m virtualenv --quiet "$venv"
    }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "maturin==1.16.0" "numpy>=1.21" "pytest>=7" "cma>=3" "tqdm>=4.60" \
    "nbclient>=0.10" "nbformat>=5" "ipykernel>=6" "matplotlib>=3.5"

cargo build -p bbt-server -p bbt-client --bins
rm -rf target/wheels
"$venv/bin/maturin" build --profile dev -m python/Cargo.toml --interpreter "$venv/bin/python" \
    --out target/wheels
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    target/wheels/bbt-*.whl
# The tests import the installed wheel, not the source folder.
cd python/tests
BBT_BIN_DIR="$PWD/../../target/debug" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
