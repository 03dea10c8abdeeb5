#!/usr/bin/env bash
# The test suite: install what is needed (system packages included), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: dashboard browser tests. GStreamer's RTSP server (run by Debian's python3-gi) and
# xvfb: camera tests (tests/test_monitor.py).
# postgresql: the store tests start their own PostgreSQL server (tests/helpers_postgres.py).
# docker-compose: tests/test_deploy.py resolves compose.yaml with `docker-compose config` (no engine needed).
scripts/bootstrap.sh chromium chromium-driver \
  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  python3-gi xvfb postgresql docker-compose
exec .venv/bin/python -m pytest "$@"
