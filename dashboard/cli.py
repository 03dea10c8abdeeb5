"""`emojimation dashboard`: serve the dashboard until Ctrl-C.

`emojimation.cli` calls `register(subparsers)` while building its parser for *every* command, so
this module imports nothing heavy at the top: Dash, Flask and the server load inside `run_command`.

Safety default: the dashboard binds 127.0.0.1. Any other address exposes the results (faces
included) to the network, so it needs `--auth USER:PASSWORD` (HTTP basic auth) or an explicit
`--no-auth`; without either the command refuses with one line on stderr and exit code 2.

It answers only to IP addresses, localhost and the names given with `--allowed-host` (a DNS
rebinding page cannot reach it), and refuses request bodies above the upload limit before
reading them (dashboard.guard).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import signal
import sys
from typing import Any

from core.config import DashboardConfig, env_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FIELDS = {f.name: f for f in dataclasses.fields(DashboardConfig)}
AUTH_ENV = env_name(FIELDS["auth"])  # USER:PASSWORD, so the password stays out of `ps`
STORE_ENV = env_name(FIELDS["store"])  # the same variable `emojimation analyse` reads
HOSTS_ENV = env_name(FIELDS["allowed_hosts"])  # the names --allowed-host adds, comma-separated
DEFAULT_HOST, DEFAULT_PORT = DashboardConfig.host, DashboardConfig.port


def register(subparsers: Any) -> None:
    """Add the `dashboard` subcommand to the `emojimation` parser. Flag defaults stay None so the
    config file and environment apply (core.config.load; the defaults are DashboardConfig's)."""
    parser = subparsers.add_parser(
        "dashboard", help="serve the emotion timeline dashboard (Dash) until Ctrl-C",
        description="Serve the dashboard over the results store. Binds 127.0.0.1 unless told otherwise.")
    parser.add_argument("--config", help="TOML settings file ([dashboard] table)")
    parser.add_argument("--store", default=None,
                        help=f"results database URL (default ${STORE_ENV}, else sqlite under $EMOJIMATION_HOME)")
    parser.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to bind (default {DEFAULT_PORT}; 0 picks a free one)")
    access = parser.add_mutually_exclusive_group()
    access.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                        help=f"require HTTP basic auth (or set ${AUTH_ENV})")
    access.add_argument("--no-auth", action="store_true", default=None,
                        help="allow a non-loopback --host without a password "
                             "(anyone who can reach it sees the results)")
    parser.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=None, metavar="NAME",
                        help="a host name the dashboard is reached by, besides IP addresses and localhost "
                             f"(repeatable; or ${HOSTS_ENV}, comma-separated; '*' allows any name)")
    parser.add_argument("--max-upload-mb", type=float, default=None,
                        help=f"largest upload in MB (default {DashboardConfig.max_upload_mb:g}); larger request "
                             "bodies are refused before they are read")
    parser.add_argument("--max-jobs", type=int, default=None,
                        help=f"uploads waiting or being analysed at once (default {DashboardConfig.max_jobs})")
    parser.set_defaults(handler=run_command)


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, has_auth: bool, no_auth: bool) -> str | None:
    """Why binding `host` is refused, or None when it is allowed."""
    if is_loopback(host) or has_auth or no_auth:
        return None
    return (f"--host {host} exposes the dashboard beyond this machine: add --auth USER:PASSWORD "
            f"(or ${AUTH_ENV}), or --no-auth to allow it without a password")


def error(message: str) -> None:
    print(f"emojimation: error: {message}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    """Check the bind, build the app, print the URL, serve until Ctrl-C or SIGTERM."""
    from core.config import default_store_url, load
    from core.errors import EmojimationError, redact_url
    from dashboard.auth import parse_credentials

    try:
        config = load(DashboardConfig, "dashboard", args.config, {name: getattr(args, name) for name in FIELDS})
    except EmojimationError as problem:
        error(str(problem))
        return EXIT_USAGE
    auth_text = "" if config.no_auth else config.auth
    try:
        credentials = parse_credentials(auth_text) if auth_text else None
    except ValueError as problem:
        error(str(problem))
        return EXIT_USAGE
    problem = bind_problem(config.host, credentials is not None, config.no_auth)
    if problem:
        error(problem)
        return EXIT_USAGE
    if not 0 <= config.port <= 65535:
        error(f"--port {config.port}: not a port number")
        return EXIT_USAGE
    if not config.max_upload_mb > 0 or config.max_jobs < 1:
        error(f"--max-upload-mb must be positive and --max-jobs at least 1 (got {config.max_upload_mb:g}, "
              f"{config.max_jobs})")
        return EXIT_USAGE
    from dashboard.guard import callback_body_limit

    max_upload_bytes = int(config.max_upload_mb * 1024 * 1024)

    store_url = config.store or default_store_url()
    try:
        from dashboard.app import create_app

        app = create_app(store_url, auth=credentials, allowed_hosts=config.allowed_hosts,
                         max_upload_bytes=max_upload_bytes, max_jobs=config.max_jobs)
    except EmojimationError as problem:
        error(str(problem))
        return EXIT_FAILED
    try:
        server = _make_server(app.server, config.host, config.port, callback_body_limit(max_upload_bytes))
    except OSError as problem:
        error(f"cannot listen on {config.host}:{config.port} ({problem.strerror or problem})")
        return EXIT_FAILED
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"Emojimation dashboard: http://{host}:{server.port}/  (store {redact_url(store_url)}"
          f"{', basic auth on' if credentials else ''}; Ctrl-C to stop)", flush=True)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        from dashboard.jobs import EXTENSION_KEY

        app.server.extensions[EXTENSION_KEY].shutdown()
    print("Emojimation dashboard stopped", flush=True)
    return EXIT_OK


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM stops the server like Ctrl-C does, so running uploads are cleaned up."""
    raise KeyboardInterrupt


class _Server:
    """A bound HTTP server: waitress when installed (a production WSGI server), else Werkzeug's."""

    def __init__(self, wsgi_app: Any, host: str, port: int, max_body_bytes: int) -> None:
        try:
            from waitress.server import create_server
        except ImportError:
            from werkzeug.serving import make_server

            self._werkzeug = make_server(host, port, wsgi_app, threaded=True)
            self._waitress = None
            self.port = int(self._werkzeug.server_port)
        else:
            # waitress refuses a larger body (413) from its Content-Length, or while a chunked one
            # arrives, before buffering it (its own default allows 1 GB).
            self._waitress = create_server(wsgi_app, host=host, port=port, threads=8, ident="emojimation",
                                           max_request_body_size=max_body_bytes + 1)
            self._werkzeug = None
            listening = getattr(self._waitress, "effective_listen", None)  # several sockets ("localhost")
            self.port = int(listening[0][1] if listening else self._waitress.effective_port)

    def serve(self) -> None:
        if self._waitress is not None:
            self._waitress.run()
        else:
            self._werkzeug.serve_forever()

    def close(self) -> None:
        if self._waitress is not None:
            self._waitress.close()
        else:
            self._werkzeug.server_close()


def _make_server(wsgi_app: Any, host: str, port: int, max_body_bytes: int) -> _Server:
    """Bind now (so a busy port fails before the URL is printed)."""
    return _Server(wsgi_app, host, port, max_body_bytes)
