#!/usr/bin/env bash
# Install dmcs and its test tools into .venv (from nothing), lint, then run the test suite.
# --fast: only the tests that need no Ray, PostgreSQL or browser (tiers: tests/conftest.py),
# on every core; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then fast=1; else args+=("$arg"); fi
done
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The dashboard's browser tests drive Debian's chromium (Playwright cannot download browsers here).
if [ "$fast" = 0 ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ "$fast" = 1 ]; then
    .venv/bin/python -m pytest -q -n auto -m "not ray and not postgres and not browser" \
        ${args[@]+"${args[@]}"}
else
    # One process: two xdist workers were measured no faster on two cores (the replays in
    # subprocesses then compete for them) and made the timing of fault-injection tests worse.
    .venv/bin/python -m pytest -q --durations=25 ${args[@]+"${args[@]}"}
fi
