"""What one Gordo project serves: its model listing, expected models and each model's metadata.

Metadata is cached per (model, revision) and shared by the workers that ask for the same model at once;
a new revision forgets what the old one served. A module of its own so that the listing and the metadata
cache are read in one place, apart from predictions (gordo_execution) and registration
(gordo_registration), which both start from a model's metadata.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from latigo.errors import LatigoError, PermanentError, TransientError, UnknownModelError
from latigo.http import describe_response
from latigo.models.gordo_client import GordoClient, RevisionGone
from latigo.models.gordo_wire import parse_model_info
from latigo.types import ModelInfo

log = logging.getLogger("latigo.models.gordo")  # one logger for the adapter and all its parts


class GordoInformation:
    """The models of one Gordo project and their metadata; see the module docstring."""

    def __init__(self, client: GordoClient) -> None:
        self.client = client
        self.settings = client.settings
        self._lock = threading.Lock()
        self._info_fetch: dict[tuple[str, str], threading.Lock] = {}
        self._infos: dict[tuple[str, str], ModelInfo] = {}
        client.on_new_revision(self._keep_revision)

    def _keep_revision(self, latest: str) -> None:
        with self._lock:
            self._infos = {key: info for key, info in self._infos.items() if key[1] == latest}

    def forget(self, info: ModelInfo) -> None:
        """Drop the cached metadata of `info` (its server no longer serves it)."""
        with self._lock:
            self._infos.pop((info.name, info.revision), None)

    # ------------------------------------------------ listing

    def get_model_list(self) -> list[str]:
        """Models the server lists and can describe; a model without metadata is skipped with a
        warning, never failing the listing. Refreshes the revision first."""
        if not self.settings.revision:
            self.client.revision(refresh=True)
        return self.client.with_revision_retry(self._model_list)

    def _model_list(self) -> list[str]:
        names = self.served_models()
        infos, missing, errors = self.survey(names)
        for name in missing:
            log.warning("gordo project %s lists model %s but has no metadata for it; skipped",
                        self.settings.project, name)
        for name, error in errors.items():
            log.warning("gordo model %s skipped: %s", name, error)
        if names and not infos and errors and all(isinstance(e, TransientError) for e in errors.values()):
            raise TransientError(f"gordo project {self.settings.project}: metadata of every model failed, "
                                 f"e.g. {next(iter(errors.values()))}")
        return [name for name in names if name in infos]

    def served_models(self) -> list[str]:
        """Names in GET /models (a directory listing: some may lack metadata)."""
        response = self.client.request("GET", "models", self.client.revision())
        models = self.client.json(response, "models").get("models")
        if not isinstance(models, list):
            raise PermanentError("gordo models: answer has no 'models' list")
        return [str(name) for name in models]

    def expected_models(self) -> list[str] | None:
        """GET /expected-models: what the project should serve; None when the server does not say."""
        response = self.client.request("GET", "expected-models", self.client.revision(), accept={404})
        if response.status_code == 404:
            return None
        expected = self.client.json(response, "expected-models").get("expected-models")
        # An empty list is what a server without EXPECTED_MODELS answers: it does not say.
        return [str(name) for name in expected] if isinstance(expected, list) and expected else None

    def survey(self, names: Sequence[str]) -> tuple[dict[str, ModelInfo], list[str], dict[str, LatigoError]]:
        """Metadata of `names`, concurrently: (infos, names without metadata, other failures)."""
        infos: dict[str, ModelInfo] = {}
        missing: list[str] = []
        errors: dict[str, LatigoError] = {}
        if not names:
            return infos, missing, errors
        with ThreadPoolExecutor(max_workers=min(self.settings.parallelism, len(names))) as pool:
            for name, result in zip(names, pool.map(self._info_or_error, names), strict=True):
                if isinstance(result, ModelInfo):
                    infos[name] = result
                elif isinstance(result, UnknownModelError):
                    missing.append(name)
                else:
                    errors[name] = result
        return infos, missing, errors

    def _info_or_error(self, name: str) -> ModelInfo | LatigoError:
        """The model's metadata, or why not; a 410 still raises, for the revision retry."""
        try:
            return self.model_info(name)
        except RevisionGone:
            raise
        except LatigoError as exc:
            return exc

    # ------------------------------------------------ one model

    def model_exists(self, name: str) -> bool:
        try:
            self.get_model_info(name)
        except UnknownModelError:
            return False
        return True

    def get_model_info(self, name: str) -> ModelInfo:
        return self.client.with_revision_retry(lambda: self.model_info(name))

    def model_info(self, name: str) -> ModelInfo:
        """The metadata at the current revision, from the cache or one request (raises RevisionGone)."""
        revision = self.client.revision()
        key = (name, revision)
        with self._lock:
            cached = self._infos.get(key)
            fetching = self._info_fetch.setdefault(key, threading.Lock())
        if cached is not None:
            return cached
        with fetching:  # workers asking for the same model at once share one metadata request
            with self._lock:
                cached = self._infos.get(key)
            if cached is not None:
                return cached
            try:
                info = parse_model_info(name, self.settings.project, revision, self._metadata(name, revision))
                with self._lock:
                    self._infos[key] = info
            finally:
                with self._lock:
                    self._info_fetch.pop(key, None)
        return info

    def _metadata(self, name: str, revision: str) -> dict[str, Any]:
        response = self.client.request("GET", f"{quote(name, safe='')}/metadata", revision, accept={404})
        if response.status_code == 404:
            raise UnknownModelError(f"gordo project {self.settings.project} has no model {name!r} "
                                    f"(revision {revision or 'latest'}): {describe_response(response)}")
        return self.client.json(response, f"metadata of {name!r}")
