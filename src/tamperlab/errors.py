"""User-facing errors: the CLI prints their message and exits with code 2, never a traceback."""


class TamperlabError(Exception):
    """A problem the user can fix (bad recipe, missing file, unreachable model id, ...)."""

    exit_code = 2


class ConfigError(TamperlabError):
    """A recipe does not match its schema (unknown key, wrong type, bad value)."""


class ResourceError(TamperlabError):
    """A model, dataset or file cannot be found or fetched."""
