"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Base class: something the user can fix (a file, a flag, a recipe key)."""


class ConfigError(UserError):
    """A bad recipe key, flag or value; the message names the field."""


class DataError(UserError):
    """Malformed or unusable input data; the message starts with `path:line:` where known."""
