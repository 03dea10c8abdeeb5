"""Shared fixtures. The FER2013 helpers live in helpers_fer.py."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # the project is not installed in the venv
    sys.path.insert(0, str(PROJECT_ROOT))

# A shell starts background jobs with SIGINT ignored, and children inherit that: the tests that
# stop a CLI with Ctrl-C (SIGINT) would then wait forever when the suite itself runs in the
# background. A handler (not SIG_IGN) here is reset to the default in every child at exec.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fer_cache(tmp_path_factory) -> Path:
    """A private decode cache (EMOJIMATION_CACHE) so tests never read or fill ~/.cache."""
    return tmp_path_factory.mktemp("emojimation-cache")


@pytest.fixture(scope="session")
def small_fer(tmp_path_factory):
    """A few dozen shared FER2013 faces as a split tree, an emotion tree and a fer2013.csv."""
    from helpers_fer import build_small_fer

    return build_small_fer(tmp_path_factory.mktemp("small-fer"))


# --- dashboard browser tests (dash[testing]'s dash_duo / dash_br fixtures) --------------------
# Debian's chromium and chromium-driver (scripts/test.sh installs them). The flags: headless (new
# mode, downloads included), no sandbox (tests run as root), and no background network traffic.
DASHBOARD_CHROMIUM_ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1400,1000",
)


@pytest.hookimpl(optionalhook=True)
def pytest_setup_options():
    """Browser options for dash_duo: Debian's /usr/bin/chromium with the flags above."""
    import os

    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = os.environ.get("DASH_TEST_CHROMEPATH", "/usr/bin/chromium")
    for argument in DASHBOARD_CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    return options


# --- PostgreSQL (the store's second backend) --------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the session (tests/helpers_postgres.py); stopped at the end,
    also when tests fail. Fails, never skips, when the PostgreSQL binaries are missing."""
    from helpers_postgres import PostgresServer

    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


# --- processes a test starts (tests/helpers_processes.py) -------------------------------------
@pytest.fixture
def process_marker():
    """A fresh marker for the environment of what the test starts; anything still carrying it
    at the end of the test is killed, also when the test failed."""
    from helpers_processes import ProcessMarker

    marker = ProcessMarker()
    try:
        yield marker
    finally:
        marker.kill_all()
