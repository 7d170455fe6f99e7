"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits non-zero."""


class TextclfError(Exception):
    """Base class: a problem with the user's input, data or configuration."""

    exit_code = 2


class ConfigError(TextclfError):
    """params.yaml (or an override) has an unknown key or a bad value."""


class DataError(TextclfError):
    """An input file is missing, unreadable or not in the expected shape."""


class ValidationFailed(TextclfError):
    """A Great Expectations suite had blocking failures. Retrying cannot fix it."""

    exit_code = 3


class ModelSourceError(TextclfError):
    """A pretrained model id/path cannot be loaded (e.g. a hub id while offline)."""
