#!/usr/bin/env bash
# The test suite: install what is needed (system packages included), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh chromium chromium-driver
exec .venv/bin/python -m pytest "$@"
