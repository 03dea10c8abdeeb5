"""A private PostgreSQL server for the store tests: initdb into a temporary folder, listen on a
free 127.0.0.1 port (its unix socket in that folder), stop and delete everything at the end.

The binaries are Debian's `postgresql` package (scripts/test.sh installs it). PostgreSQL
refuses to run as root, so as root the server commands run as the `postgres` system user
(`runuser -u postgres --`); any other user runs them directly.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

USER = "emojimation"
PASSWORD = "Secret:p@ss/word"  # needs URL quoting, and must never show up in any message


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl (else from PATH); FAILS when missing."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    found = candidates[-1] if candidates else shutil.which("initdb")
    if not found or not (Path(found).parent / "pg_ctl").exists():
        pytest.fail("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb, pg_ctl): the store "
                    "tests need them. Run scripts/test.sh, which installs Debian's `postgresql` package, or "
                    "`apt-get install postgresql`.", pytrace=False)
    return Path(found).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = find_bin_dir()
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="emojimation-pg-"))  # short: the socket path is limited
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.databases = 0
        if self.as_root:
            try:
                shutil.chown(self.root, "postgres", "postgres")
            except LookupError:
                self._cleanup()
                pytest.fail("running as root needs the `postgres` system user (Debian's postgresql package "
                            "creates it)", pytrace=False)

    def _run(self, tool: str, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        result = subprocess.run([*prefix, str(self.bin / tool), *args], cwd=self.root, capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def start(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):  # another process may take the free port before the server does
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                          "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        with self.admin() as admin:
            admin.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        return self

    def admin(self):
        """The superuser, over the unix socket (trusted)."""
        import psycopg

        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)

    def url(self, database: str, password: str | None = PASSWORD) -> str:
        """The test user's URL (`password=None`: none in the URL, libpq looks elsewhere)."""
        login = USER if password is None else f"{USER}:{quote(password, safe='')}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def new_database(self, password: str | None = PASSWORD) -> str:
        """A fresh, empty database owned by the test user; returns its URL."""
        self.databases += 1
        name = f"test_{self.databases}"
        with self.admin() as admin:
            admin.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name, password)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
        finally:
            self._cleanup()

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # the postmaster takes its children with it
            for _ in range(100):
                time.sleep(0.1)
                os.kill(pid, 0)  # raises once it is gone
        except (OSError, ValueError, IndexError):
            pass

    def _cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text and quote(PASSWORD, safe="") not in text, text
