"""The error classes latigo's loops act on.

The executor decides between retrying and giving up by class alone, so every
adapter translates the failures of the system it talks to into one of these.
"""


class LatigoError(Exception):
    """Base of every error latigo raises on purpose."""


class ConfigError(LatigoError):
    """The configuration is unusable; the message names the key (and file/line)."""


class SchemaOutdatedError(LatigoError):
    """The database schema is behind the code; run `latigo db upgrade`."""


class TransientError(LatigoError):
    """Worth retrying: connection failures, timeouts, 429 and 5xx answers."""


class PermanentError(LatigoError):
    """Retrying cannot help: unknown model, no data, 4xx, invalid input."""


class UnknownModelError(PermanentError):
    """The model is not known to the provider that was asked."""


class NoDataError(PermanentError):
    """The sensor provider had no data for the tags and range asked for."""
