"""Typed errors that the CLI turns into one-line messages and non-zero exits."""

import re


class EmojimationError(Exception):
    """Base class: `str(error)` is a complete one-line message for the user."""


class DataError(EmojimationError):
    """A data set, image or video cannot be read or is malformed."""


class ConfigError(EmojimationError):
    """A setting is missing or invalid."""


class ModelError(EmojimationError):
    """A model file cannot be loaded or does not fit the expected shape."""


# URL-shaped text: a scheme, then everything up to whitespace, a quote or an angle bracket (a
# password may hold '@', '/', ':', '?' or '#'; it cannot hold whitespace or quotes here).
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s'\"<>`]+)")
# Parameters (in a query, or in a camera's path) whose values are secrets: password=, pwd=,
# passwd=, token=, access_token=, key=, api_key=, secret=, client_secret=, auth=, sig=, ...
_SECRET_PARAM = re.compile(r"([?&;#/_][A-Za-z0-9.-]*(?:pass|pwd|token|key|secret|auth|sig|credential|session)"
                           r"[A-Za-z0-9_.-]*=)([^&;#\s'\"<>`]*)", re.IGNORECASE)
# The same `name=value` outside URLs (a libpq conninfo `password=...`, a logged form field).
_SECRET_WORD = re.compile(r"(?:^|(?<=[\s,(]))((?:password|passwd|pwd|secret|token|api_key|apikey|access_token|"
                          r"client_secret)=)([^\s,;)'\"]*)", re.IGNORECASE)
# Path segments after which the rest of a path is a credential: Slack (/services/T../B../XXXX),
# Discord (/api/webhooks/ID/TOKEN), Mattermost and Zapier (/hooks/...), Home Assistant
# (/api/webhook/ID), Microsoft Teams (/webhookb2/..., /IncomingWebhook/...), IFTTT (/with/key/KEY).
_SECRET_AFTER = frozenset({"services", "webhooks", "webhook", "hooks", "webhookb2", "incomingwebhook", "key"})
# A path segment that looks generated: 16+ letters and digits with both present (a UniFi
# Protect stream alias, a Mattermost hook id, a hex key), 32+ with '-' and '_' too (a Discord
# token, a GUID), or a Telegram bot token (bot123456:ABC-...).
_TOKEN_SEGMENT = re.compile(r"(?=.*\d)(?=.*[A-Za-z])(?:[A-Za-z0-9]{16,}|[A-Za-z0-9_-]{32,}|[A-Za-z0-9_-]*:"
                            r"[A-Za-z0-9_-]{20,})")
MASK = "***"


def redact_url(text: str) -> str:
    """`text` with every credential in it shown as `***`: the one redaction for every URL in the
    project (camera names, the store's rows, logs, errors, alert payloads, dashboard pages).

    In each `scheme://...` URL:
    - the password in the user info: `rtsp://admin:p@ss/w@host` -> `rtsp://admin:***@host` (it
      ends at the last '@' before the host, so '@', '/' and ':' in it are covered);
      `https://TOKEN@host` -> `https://***@host`;
    - parameters named like secrets, in the query or the path: `?password=`, `&pwd=`,
      `?token=`, `?access_token=`, `?key=`, `?api_key=`, `?secret=`, `&auth=`, `&sig=` (any
      case) -> `=***`;
    - tokens in the path: all of it after a webhook marker (`/services/`, `/webhooks/`,
      `/hooks/`, `/webhook/`, `/webhookb2/`, `/key/`), and any segment that looks generated
      (16+ letters and digits mixed, 32+ with '-' and '_', `bot123:ABC...`).
    Outside URLs, `password=...`, `token=...` and the like (a conninfo string) are masked too.

    It errs on the side of hiding: an '@' in the path of a URL with a port can hide its host.
    Redacting twice changes nothing.
    """
    return _SECRET_WORD.sub(rf"\1{MASK}", _URL.sub(_redact_match, text))


def _redact_match(match: re.Match) -> str:
    scheme, rest = match.group(1), match.group(2)
    userinfo, rest = _split_userinfo(rest)
    host_end = _first(rest, "/?#")
    host, tail = rest[:host_end], rest[host_end:]
    path_end = _first(tail, "?#")
    path, query = _redact_path(tail[:path_end]), tail[path_end:]
    return scheme + userinfo + host + _SECRET_PARAM.sub(rf"\1{MASK}", path + query)


def _first(text: str, marks: str) -> int:
    return min((i for i in (text.find(m) for m in marks) if i >= 0), default=len(text))


def _split_userinfo(rest: str) -> tuple[str, str]:
    """(the user info with its secret masked, '@' included, or ""; what follows it). The user
    info ends at the last '@' whose left side reads `user:password` (no '/', '?', '#' in the
    user) or a bare `token` (none in it at all)."""
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) > 0:
        before = rest[:at]
        colon = before.find(":")
        if colon > 0 and _first(before[:colon], "/?#") == colon:
            return f"{before[:colon]}:{MASK}@", rest[at + 1:]
        if colon < 0 and _first(before, "/?#") == len(before):
            return f"{MASK}@", rest[at + 1:]
    return "", rest


def _redact_path(path: str) -> str:
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment.lower() in _SECRET_AFTER and any(segments[index + 1:]):
            return "/".join([*segments[:index + 1], MASK])
        if _TOKEN_SEGMENT.fullmatch(segment):
            segments[index] = MASK
    return "/".join(segments)


def database_errors() -> tuple[type[Exception], ...]:
    """The database drivers' own error classes, for a last-resort one-line message. The store
    turns its drivers' errors into StoreError; psycopg's class is only added once it is loaded."""
    import sqlite3
    import sys

    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, *((psycopg.Error,) if psycopg is not None else ()))
