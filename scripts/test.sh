#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU wheel of torch first: a bare 'torch' requirement would pull a CUDA build of several GB.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[dev]'
ruff format --check .
ruff check .
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
