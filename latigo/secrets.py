"""Keeping secrets out of output: which keys are secret, masking, and a log filter.

Values of secret keys are registered when the config is loaded; the log filter
then replaces them wherever they would appear, including inside exception text
from third-party libraries that echo a connection string back.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|connection_string|subscription_key|api_key|access_key|sas_key|credential)", re.I
)
# Keys that name where a secret is, not the secret: token_url, password_file, ...
_NOT_SECRET_SUFFIX = re.compile(r"_(url|uri|endpoint|file|path|name|scope|expiry)$", re.I)
# Secrets inside free text: connection-string fields, SAS signatures, bearer tokens.
_SHARED_ACCESS_KEY = re.compile(r"(SharedAccessKey=|AccountKey=|[?&;]sig=|Password=|Pwd=)[^;&\s'\"]+", re.I)
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_registered: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret by its name (password, client_secret, connection_string, ...)."""
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_SUFFIX.search(key)


def register_secret(value: str | None) -> None:
    """Remember a secret value so the log filter masks it wherever it shows up."""
    if value and len(value) >= 4:
        with _lock:
            _registered.add(value)
            for match in _SHARED_ACCESS_KEY.finditer(value):  # the key alone, as an SDK may echo it
                if len(match.group(0)) - len(match.group(1)) >= 4:
                    _registered.add(match.group(0)[len(match.group(1)) :])


def mask_url(url: str) -> str:
    """The URL with its password replaced (postgresql://user:***@host/db)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def mask_text(text: str) -> str:
    """Replace every registered secret and any SharedAccessKey=... in free text."""
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _SHARED_ACCESS_KEY.sub(lambda m: m.group(1) + MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


class SecretFilter(logging.Filter):
    """Masks secrets in a record's final message (arguments and exception text included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's own error reporting
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True
