"""The error classes latigo's loops act on.

The executor decides between retrying and giving up by class alone, so every
adapter translates the failures of the system it talks to into one of these.
"""

from latigo.secrets import mask_text


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


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """One line for logs, the ledger and error messages: the class and the message, with every registered
    secret masked (a driver's message may quote a connection string)."""

    text = " ".join(mask_text(str(exc)).split())[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


MAX_ERROR_LENGTH = 2000
"""The longest error text latigo stores (a task's error in the ledger, a peer's reason in peer_status)."""


def one_line(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """`text` with its whitespace runs (newlines too) made single spaces, cut at `limit` characters: what
    goes into a ledger row or a log line. Here, with the error classes, because the task lifecycle, the
    task pipeline and the peer status all store or log such texts and none of them should import another
    for it."""
    flat = " ".join(str(text).split())
    return flat[:limit]
