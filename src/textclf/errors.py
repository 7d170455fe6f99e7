"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits with their code
(see ``textclf --help``); the flow does not retry them, since the same inputs would fail the same way."""


class TextclfError(Exception):
    """A problem with the user's input, data, configuration or registry state (exit 3)."""

    exit_code = 3


class ConfigError(TextclfError):
    """params.yaml (or an override) has an unknown key or a bad value."""


class DataError(TextclfError):
    """An input file is missing, unreadable or not in the expected shape."""


class ValidationFailed(TextclfError):
    """A Great Expectations suite had blocking failures (exit 4)."""

    exit_code = 4


class ModelSourceError(TextclfError):
    """A pretrained model id/path cannot be loaded (e.g. a hub id while offline)."""
