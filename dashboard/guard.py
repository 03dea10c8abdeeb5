"""What the dashboard refuses before Dash sees a request: foreign Host headers and oversized bodies.

`RequestGuard` wraps the Flask app's WSGI callable (so it applies under waitress, Werkzeug's
server and the browser tests' server alike):

- **Host.** A page on another site can point its own name at 127.0.0.1 (DNS rebinding) and
  then read and delete results as if it were the dashboard's own page: the browser sends that
  name in the Host header. So only these hosts are served: IP literals (a rebinding page can
  only ever send its own name), `localhost` and `*.localhost`, and the names given with
  `--allowed-host` (or EMOJIMATION_DASHBOARD_HOSTS, comma-separated; `*` allows any name).
  Anything else gets 403 and one line saying how to allow it, as Jupyter does.
- **Bodies.** A request body's size is checked from Content-Length before a byte of it is read:
  Dash's callback endpoint (`/_dash-update-component`, where an upload arrives base64-encoded
  in JSON) may carry an upload of `max_upload_bytes` and 1 MiB more; every other request
  1 MiB. Larger gets 413. A chunked body (no Content-Length) is counted while it is read and
  refused with 413 as soon as it passes the limit. waitress is also given the largest limit, so
  it refuses before buffering the body at all.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable

from werkzeug.exceptions import RequestEntityTooLarge

HOSTS_ENV = "EMOJIMATION_DASHBOARD_HOSTS"
CALLBACK_PATH = "/_dash-update-component"
SMALL_BODY_BYTES = 1024 * 1024  # every request but a callback: forms, logins, nothing uploads there
CALLBACK_SLACK_BYTES = 1024 * 1024  # the JSON around an upload's base64 text
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def callback_body_limit(max_upload_bytes: int) -> int:
    """The largest callback body: an upload of `max_upload_bytes`, base64-encoded, in JSON."""
    return (max_upload_bytes + 2) // 3 * 4 + CALLBACK_SLACK_BYTES


def host_name(header: str) -> str:
    """`Example.org:8050` -> `example.org`, `[::1]:8050` -> `::1`, `localhost.` -> `localhost`."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_hosts(text: str | None) -> list[str]:
    """`a.example, b.example` -> ["a.example", "b.example"]."""
    return [name for name in (host_name(part) for part in (text or "").split(",")) if name]


class RequestGuard:
    """WSGI middleware: the Host check, then the body limits (see the module docstring)."""

    def __init__(self, app: WsgiApp, allowed_hosts: Iterable[str] = (), max_upload_bytes: int = 0) -> None:
        self.app = app
        self.allowed = {host_name(name) for name in allowed_hosts if name.strip()}
        self.any_host = "*" in self.allowed
        self.callback_limit = callback_body_limit(max_upload_bytes) if max_upload_bytes else SMALL_BODY_BYTES

    def host_allowed(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding page
            return True
        name = host_name(header)
        return (self.any_host or is_ip_literal(name) or name == "localhost" or name.endswith(".localhost")
                or name in self.allowed)

    def body_limit(self, path: str) -> int:
        return self.callback_limit if path.rstrip("/").endswith(CALLBACK_PATH) else SMALL_BODY_BYTES

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.host_allowed(environ.get("HTTP_HOST")):
            name = host_name(environ.get("HTTP_HOST", ""))
            return _refuse(start_response, "403 Forbidden",
                           f"Host {name!r} is not served here: start the dashboard with --allowed-host {name} "
                           f"(or {HOSTS_ENV}) if that name is yours\n")
        limit = self.body_limit(environ.get("PATH_INFO", ""))
        length = environ.get("CONTENT_LENGTH") or ""
        if length.strip():
            try:
                size = int(length)
            except ValueError:
                return _refuse(start_response, "400 Bad Request", "Content-Length is not a number\n")
            if size > limit:
                return _refuse(start_response, "413 Request Entity Too Large",
                               f"request body of {size} bytes refused: the limit here is {limit} bytes\n")
        elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input"] = LimitedInput(environ["wsgi.input"], limit)
            environ["wsgi.input_terminated"] = True
        return self.app(environ, start_response)


class LimitedInput:
    """A request body stream that raises 413 (werkzeug's RequestEntityTooLarge, which Flask
    answers) once more than `limit` bytes have been read from it."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit, self.read_bytes = stream, limit, 0

    def _count(self, data: bytes) -> bytes:
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise RequestEntityTooLarge(f"request body over the limit of {self.limit} bytes")
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # never read an unbounded body whole: one byte past the limit is enough
            size = self.limit - self.read_bytes + 1
            chunks = []
            while size > 0 and (chunk := self.stream.read(min(size, 65536))):
                chunks.append(self._count(chunk))
                size -= len(chunk)
            return b"".join(chunks)
        return self._count(self.stream.read(min(size, self.limit - self.read_bytes + 1)))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self.stream.readline(self.limit - self.read_bytes + 1 if size < 0 else size))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def _refuse(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
