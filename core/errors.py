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


def redact_url(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`, `scheme://token@host` ->
    `scheme://***@host`, `?password=...` -> `?password=***`: secrets are never shown (logs,
    errors, store events). The one redaction for every URL in the project."""
    text = re.sub(r"(\w+://[^:/@\s]*):[^/@\s]*@", r"\1:***@", text)
    text = re.sub(r"(\w+://)[^:/@\s*]+@", r"\1***@", text)  # a bare token as the user part is a secret too
    return re.sub(r"([?&]password=)[^&\s]*", r"\1***", text, flags=re.IGNORECASE)


def database_errors() -> tuple[type[Exception], ...]:
    """The database drivers' own error classes, for a last-resort one-line message. The store
    turns its drivers' errors into StoreError; psycopg's class is only added once it is loaded."""
    import sqlite3
    import sys

    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, *((psycopg.Error,) if psycopg is not None else ()))
