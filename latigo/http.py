"""HTTP for latigo's adapters: pooled sessions, timeouts, bounded retries, error classes, tokens.

Gordo and the Data API fail the same ways (timeouts, 429, 5xx, an expired token),
so retrying, Retry-After, the refresh-once-on-401 rule and the translation into
TransientError / PermanentError live here once.
"""

from __future__ import annotations

import html
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.peers import GATEWAY_STATUS, CircuitBreaker
from latigo.secrets import register_secret

log = logging.getLogger(__name__)

CONNECTION_FAILURES = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
"""What requests raises when the connection failed: refused, reset, timed out, DNS, or cut in the middle of
the answer's body (ChunkedEncodingError, whatever the body's encoding: a reset while reading it)."""
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def connection_failure(exc: BaseException) -> str:
    """One of CONNECTION_FAILURES in a word or three: its class name, or what a ChunkedEncodingError means."""
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "ConnectionError (cut while reading the answer)"
    return type(exc).__name__


@dataclass
class RetryPolicy:
    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_status: frozenset[int] = RETRYABLE_STATUS

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds before retry number `attempt` (1-based): Retry-After when given, else
        exponential backoff with full jitter (spreads a herd of executors apart)."""
        if retry_after:
            try:
                return min(float(retry_after), self.max_delay)
            except ValueError:
                pass
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(max_retries=0)
"""For calls whose caller owns the retries."""


class HttpError(Exception):
    """Carries the response so callers can map particular statuses to their own errors."""

    def __init__(self, message: str, response: requests.Response | None = None) -> None:
        super().__init__(message)
        self.response = response

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None


def describe_response(response: requests.Response, limit: int = 300) -> str:
    """A one-line summary of an error answer: the JSON message when there is one, else the text."""
    try:
        body = response.json()
        if isinstance(body, dict):
            text = body.get("message") or body.get("error") or str(body)
        else:
            text = str(body)
    except ValueError:
        text = _html_text(response.text)
    text = " ".join(str(text).split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _html_text(text: str) -> str:
    """The message of an HTML error page (its <p> paragraphs, else its <title>); other text as is."""
    if not text.lstrip().startswith("<"):
        return text
    found = re.findall(r"<p>(.*?)</p>", text, re.S) or re.findall(r"<title>(.*?)</title>", text, re.S)
    return html.unescape(" ".join(found)) if found else text


class ClientCredentialsToken:
    """An Azure AD access token from the client-credentials flow, cached until shortly before expiry."""

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        timeout: float = 10.0,
        refresh_margin: float = 120.0,
    ) -> None:
        register_secret(client_secret)
        self._session, self._url, self._timeout = session, token_url, timeout
        self._form = {"grant_type": "client_credentials", "client_id": client_id,
                      "client_secret": client_secret, "scope": scope}
        self._margin = refresh_margin
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def get(self, force_refresh: bool = False) -> str:
        with self._lock:
            if force_refresh or self._token is None or time.monotonic() >= self._expires_at - self._margin:
                self._fetch()
            return self._token  # type: ignore[return-value]

    def _fetch(self) -> None:
        try:
            response = self._session.post(self._url, data=self._form, timeout=self._timeout)
        except requests.RequestException as exc:
            raise TransientError(f"token request to {self._url} failed: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"token endpoint answered {response.status_code}")
        if response.status_code != 200:
            raise PermanentError(f"token endpoint refused the client credentials ({response.status_code}): "
                                 f"{describe_response(response)}")
        body = response.json()
        self._token = body["access_token"]
        register_secret(self._token)
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3600))


class HttpClient:
    """A pooled session that retries what is worth retrying and classifies what is not.

    `request()` returns the response for 2xx and for any status in `accept`; it raises
    TransientError after retries are exhausted, PermanentError (with the server's own
    message) for other 4xx. With a `peer` breaker, every request reports to it (a connection failure
    or a gateway's 502/503/504 counts against the peer, any other answer clears it) and raises
    latigo.peers.PeerDown instead of calling a peer whose breaker is open.

    `timeout` is the read timeout; connections get `connect_timeout` (a server that is not there is
    known in seconds, a slow model may take long to answer)."""

    def __init__(
        self,
        name: str,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        token: Callable[[bool], str] | None = None,
        headers: dict[str, str] | None = None,
        pool_size: int = 32,
        sleep: Callable[[float], None] = time.sleep,
        peer: CircuitBreaker | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.name, self.timeout = name, timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.peer = peer
        self.retry = retry or RetryPolicy()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(headers or {})
        self._token = token
        self._sleep = sleep
        self.requests_sent = 0

    def request(self, method: str, url: str, accept: Iterable[int] = (), retry: RetryPolicy | None = None,
                **kwargs: Any) -> requests.Response:
        """`retry` replaces the client's policy for this call: a path whose caller owns the retries
        (the executor redelivers a task) passes NO_RETRY so that retries never multiply."""
        policy = retry or self.retry
        accept = set(accept)
        refreshed = force_refresh = False
        attempt = 0
        while True:
            attempt += 1
            probe = self.peer.before_call() if self.peer is not None else False
            response = self._send(method, url, force_refresh, attempt, policy, dict(kwargs), probe)
            force_refresh = False
            if response is None:
                continue
            status = response.status_code
            self._report(status, method, url, probe, last=attempt > policy.max_retries)
            if status < 300 or status in accept:
                return response
            if status == 401 and self._token is not None and not refreshed:
                refreshed = force_refresh = True  # once: the cached token may have been revoked early
                attempt -= 1
                continue
            if status in policy.retry_status:
                if attempt <= policy.max_retries:
                    delay = policy.delay(attempt, response.headers.get("Retry-After"))
                    log.warning("%s %s %s answered %s; retry %d/%d in %.1fs", self.name, method, _path(url),
                                status, attempt, policy.max_retries, delay)
                    self._sleep(delay)
                    continue
                raise TransientError(f"{self.name}: {method} {_path(url)} answered {status} after "
                                     f"{attempt} attempts: {describe_response(response)}")
            raise PermanentError(f"{self.name}: {method} {_path(url)} answered {status}: {describe_response(response)}")

    def _send(
        self, method: str, url: str, refresh: bool, attempt: int, policy: RetryPolicy, kwargs: dict[str, Any],
        probe: bool = False,
    ) -> requests.Response | None:
        headers = dict(kwargs.pop("headers", None) or {})
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token(refresh)}"
        timeout = kwargs.pop("timeout", self.timeout)
        try:
            self.requests_sent += 1
            response = self.session.request(method, url, headers=headers,
                                            timeout=(min(self.connect_timeout, timeout), timeout), **kwargs)
        except CONNECTION_FAILURES as exc:
            last, reason = attempt > policy.max_retries, f"{method} {_path(url)}: {connection_failure(exc)}"
            if self.peer is not None and self.peer.failed(reason, probe, last):
                raise self.peer.down_error() from None
            if attempt <= policy.max_retries:
                delay = policy.delay(attempt)
                log.warning("%s %s %s failed (%s); retry %d/%d in %.1fs", self.name, method, _path(url),
                            connection_failure(exc), attempt, policy.max_retries, delay)
                self._sleep(delay)
                return None
            raise TransientError(f"{self.name}: {method} {_path(url)} failed after {attempt} attempts: "
                                 f"{connection_failure(exc)}") from None
        return response

    def _report(self, status: int, method: str, url: str, probe: bool, last: bool) -> None:
        """Tell the peer's breaker how the answer went: a gateway's 502/503/504 counts against the peer
        (raising PeerDown once the breaker is open; `last`: no retry follows, see CircuitBreaker.failed),
        any other answer is the peer answering."""
        if self.peer is None:
            return
        if status not in GATEWAY_STATUS:
            self.peer.succeeded()
        elif self.peer.failed(f"{method} {_path(url)} answered {status}", probe, last):
            raise self.peer.down_error()

    def close(self) -> None:
        self.session.close()


def _path(url: str) -> str:
    """The URL without its query string (which may carry keys or tokens)."""
    return url.split("?", 1)[0]


@dataclass(kw_only=True)
class AzureAdSettings:
    """Azure AD client credentials, the same keys wherever latigo calls an Azure-protected API (Gordo, the
    Time Series API): all four of tenant, client_id, client_secret and scope, or none."""

    tenant: str = ""
    authority_host: str = "https://login.microsoftonline.com"
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""
    """The API's scope, e.g. "<app or resource id>/.default"."""

    def token(self, owner: str, timeout: float) -> ClientCredentialsToken | None:
        return azure_ad_token(owner, self.tenant, self.authority_host, self.client_id, self.client_secret,
                              self.scope, timeout)


def azure_ad_token(owner: str, tenant: str, authority_host: str, client_id: str, client_secret: str, scope: str,
                   timeout: float) -> ClientCredentialsToken | None:
    """The client-credentials token of an adapter's settings: None when none of tenant, client_id,
    client_secret and scope is set, a ConfigError naming the missing ones when only some are."""
    given = {"tenant": tenant, "client_id": client_id, "client_secret": client_secret, "scope": scope}
    missing = [key for key, value in given.items() if not value]
    if len(missing) == len(given):
        return None
    if missing:
        raise ConfigError(f"{owner}: Azure AD auth needs tenant, client_id, client_secret and scope; "
                          f"missing {', '.join(missing)}")
    url = f"{authority_host.rstrip('/')}/{quote(tenant, safe='')}/oauth2/v2.0/token"
    return ClientCredentialsToken(requests.Session(), url, client_id, client_secret, scope, timeout=timeout)
