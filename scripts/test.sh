#!/usr/bin/env bash
# The test suite: install what is needed (system packages included), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# postgresql: the store tests start their own PostgreSQL server (tests/helpers_postgres.py).
scripts/bootstrap.sh chromium chromium-driver postgresql
exec .venv/bin/python -m pytest "$@"
