"""The HTTP side of one Gordo project: its connections, token, timeouts and revisions.

One Gordo server serves one project under `/gordo/v0/<project>/`, in numbered revisions (one per build of
the project). Every request made here names the revision it means, so a listing, its metadata and the
predictions made from it agree even while a new build is being rolled out; a 410 (revision removed) raises
RevisionGone, which `with_revision_retry` answers by refreshing the revision and trying once more.

A module of its own so that what is asked of Gordo (gordo_information, gordo_execution) is written without
the plumbing of how it is asked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.http import ClientCredentialsToken, HttpClient, RetryPolicy, describe_response
from latigo.models.gordo_settings import DEFAULT_MODEL_SLOTS, GordoSettings
from latigo.peers import PEERS

log = logging.getLogger("latigo.models.gordo")  # one logger for the adapter and all its parts

T = TypeVar("T")


class RevisionGone(TransientError):
    """The server answered 410: the revision asked for is no longer served."""


class GordoClient:
    """Requests to one Gordo project, pinned to a revision; see the module docstring."""

    def __init__(self, settings: GordoSettings) -> None:
        if not settings.base_url or not settings.project:
            raise ConfigError("gordo: base_url and project are required")
        self.settings = settings
        self.base = f"{settings.base_url.rstrip('/')}/gordo/v0/{quote(settings.project, safe='')}"
        self.retry = RetryPolicy(
            max_retries=settings.max_retries,
            base_delay=settings.retry_base_delay.total_seconds(),
            max_delay=settings.retry_max_delay.total_seconds(),
        )
        self.token = _make_token(settings)
        self.http = HttpClient(
            "gordo", timeout=settings.timeout.total_seconds(), retry=self.retry,
            token=self.token.get if self.token else None,
            pool_size=settings.pool_size or DEFAULT_MODEL_SLOTS + settings.parallelism,
            peer=PEERS.breaker(f"gordo {settings.project} at {urlsplit(settings.base_url).netloc}"),
            connect_timeout=settings.connect_timeout.total_seconds(),
        )
        self._lock = threading.Lock()
        self._revision_fetch = threading.Lock()
        self._revision: str | None = None
        self._revision_at = 0.0
        self._on_new_revision: list[Callable[[str], None]] = []

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------ revisions

    def on_new_revision(self, forget: Callable[[str], None]) -> None:
        """Call `forget(latest)` whenever the revision changes, so caches keep only what `latest` serves."""
        self._on_new_revision.append(forget)

    def revision(self, refresh: bool = False) -> str:
        """The revision requests are pinned to: the configured pin, else the server's latest
        (re-read every `revision_refresh`, or at once when `refresh`)."""
        if self.settings.revision:
            return self.settings.revision
        ttl = self.settings.revision_refresh.total_seconds()
        asked_at = time.monotonic()
        with self._lock:
            if self._revision is not None and not refresh and asked_at - self._revision_at < ttl:
                return self._revision
        with self._revision_fetch:  # one request for all the workers that found it stale together
            with self._lock:
                if self._revision is not None and self._revision_at >= asked_at:
                    return self._revision
            latest = self._latest_revision()
            self._store_revision(latest)
        return latest

    def _store_revision(self, latest: str) -> None:
        with self._lock:
            if latest != self._revision:
                if self._revision is not None:
                    log.info("gordo project %s: revision %s -> %s", self.settings.project, self._revision, latest)
                for forget in self._on_new_revision:
                    forget(latest)
            self._revision, self._revision_at = latest, time.monotonic()

    def _latest_revision(self) -> str:
        response = self.http.request("GET", f"{self.base}/revisions", accept={404})
        if response.status_code == 404:  # a server without revisions: ask without naming one
            return ""
        body = self.json(response, "revisions")
        return str(body.get("latest") or "")

    def with_revision_retry(self, action: Callable[[], T]) -> T:
        """Run `action`; on a 410 refresh the revision and run it once more."""
        try:
            return action()
        except RevisionGone as gone:
            if self.settings.revision:
                raise PermanentError(f"gordo project {self.settings.project}: the pinned revision "
                                     f"{self.settings.revision} is not served any more ({gone})") from None
            log.warning("%s; refreshing the revision and retrying", gone)
            self.revision(refresh=True)
        try:
            return action()
        except RevisionGone as gone:
            raise TransientError(f"{gone} (again, right after refreshing the revision)") from None

    # ------------------------------------------------ requests

    def request(self, method: str, path: str, revision: str, accept: set[int] | None = None,
                params: dict[str, str] | None = None, retry: RetryPolicy | None = None,
                **kwargs: Any) -> requests.Response:
        """`method` on the project's `path` at `revision`; a 410 raises RevisionGone."""
        query = dict(params or {})
        if revision:
            query["revision"] = revision
        response = self.http.request(method, f"{self.base}/{path}", accept={410, *(accept or ())},
                                     params=query, retry=retry, **kwargs)
        if response.status_code == 410:
            raise RevisionGone(f"gordo project {self.settings.project}: revision {revision} is gone: "
                               f"{describe_response(response)}")
        return response

    def json(self, response: requests.Response, what: str) -> dict[str, Any]:
        """The answer's JSON object; an answer that is not JSON is transient, another JSON value permanent."""
        try:
            body = response.json()
        except ValueError:
            raise TransientError(f"gordo {what}: answer is not JSON: {describe_response(response)}") from None
        if not isinstance(body, dict):
            raise PermanentError(f"gordo {what}: expected a JSON object, got {type(body).__name__}")
        return body


def _make_token(settings: GordoSettings) -> ClientCredentialsToken | None:
    return settings.token("gordo", settings.timeout.total_seconds())
