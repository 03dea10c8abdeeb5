"""HTTP basic authentication for the whole dashboard: every page, asset and callback.

Written here rather than taken from the `dash-auth` package (2.3.0) because that one answers a
malformed `Authorization` header with a 500 error, compares passwords with `==` (timing leak),
and logs a warning on every request unless a Flask secret key is set. This check is a single
`before_request` hook: nothing is served before the credentials match.

Basic auth sends the password base64-encoded, not encrypted: on a network, put the dashboard
behind HTTPS (a reverse proxy) or keep it on 127.0.0.1 and use an SSH tunnel.
"""

from __future__ import annotations

import base64
import binascii
import hmac

import flask

REALM = "Emojimation dashboard"


def parse_credentials(text: str) -> tuple[str, str]:
    """`user:password` -> (user, password); the password may itself contain colons."""
    user, separator, password = text.partition(":")
    if not separator or not user or not password:
        raise ValueError("--auth must be USER:PASSWORD with a non-empty user and password")
    return user, password


def _offered(header: str | None) -> tuple[str, str] | None:
    """The (user, password) an Authorization header offers, None if absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else None


def install_basic_auth(server: flask.Flask, user: str, password: str) -> None:
    """Refuse every request whose credentials do not match with 401 and a login challenge."""
    expected_user, expected_password = user.encode(), password.encode()

    @server.before_request
    def require_credentials() -> flask.Response | None:
        offered = _offered(flask.request.headers.get("Authorization"))
        if offered is not None:
            # Compare both parts, always, in constant time: no early exit tells which one was wrong.
            user_ok = hmac.compare_digest(offered[0].encode(), expected_user)
            password_ok = hmac.compare_digest(offered[1].encode(), expected_password)
            if user_ok and password_ok:
                return None
        return flask.Response("Login required\n", status=401, mimetype="text/plain",
                              headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
