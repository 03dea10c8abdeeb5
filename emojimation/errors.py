"""Typed errors that the CLI turns into one-line messages and non-zero exits."""


class EmojimationError(Exception):
    """Base class: `str(error)` is a complete one-line message for the user."""


class DataError(EmojimationError):
    """A data set, image or video cannot be read or is malformed."""


class ConfigError(EmojimationError):
    """A setting is missing or invalid."""


class ModelError(EmojimationError):
    """A model file cannot be loaded or does not fit the expected shape."""
