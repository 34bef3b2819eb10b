"""latigo's `gordo` provider: many Gordo projects behind one ingress, one client per project.

Gordo serves each project from its own model server, all under one host at `/gordo/v0/<project>/`
(`project_urls` names a project served elsewhere). The projects are configured (`project: NAME` or
`projects: [...]`) or discovered (`discover: kubernetes`: the Gordo resources of the namespace, listed
again every schedule cycle). A model is (project, name); each project gets a `GordoModels` client of its
own (its own connections, revision and metadata cache), built on first use and kept.

A schedule cycle lists the projects concurrently; a project whose listing fails (its server down, a 5xx)
is skipped for that cycle with a warning and never holds the others back. Metadata is cached per
(project, model, revision), so a cycle in which no project was rebuilt asks each server for its revision
and its model list only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from latigo.errors import ConfigError, LatigoError, TransientError, UnknownModelError
from latigo.http import RetryPolicy
from latigo.interfaces import (
    CheckableProvider,
    ModelExecutionProvider,
    ModelInformationProvider,
    SensorDataProvider,
)
from latigo.models.gordo import GordoModels, check_models, format_check_report
from latigo.models.gordo_kubernetes import SERVICE_ACCOUNT_DIR, GordoKubernetes, resolve_kubernetes
from latigo.models.gordo_settings import GordoSettings, with_pool_for
from latigo.models.window_joining import WindowJoiner
from latigo.prediction_metadata import MetadataApiClient, MetadataApiSettings
from latigo.timegrid import predicted_buckets
from latigo.types import ModelInfo, ModelRef, ModelStatus, PredictionFrame, TimeRange

log = logging.getLogger(__name__)


class GordoProjects(ModelInformationProvider, ModelExecutionProvider, CheckableProvider):
    """Models of every configured or discovered Gordo project; see the module docstring."""

    Settings = GordoSettings

    def __init__(
        self,
        settings: GordoSettings,
        sensors: SensorDataProvider | None = None,
        kubernetes_environ: Mapping[str, str] | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        sensor_source: Callable[[], SensorDataProvider] | None = None,
    ) -> None:
        _check(settings)
        self.settings = settings
        self._sensors, self._sensor_source = sensors, sensor_source
        self._environ = dict(os.environ if kubernetes_environ is None else kubernetes_environ)
        self._service_account_dir = service_account_dir
        self._clients: dict[str, GordoModels] = {}
        self._lock = threading.Lock()
        self._discovery: GordoKubernetes | None = None
        self._prevent: MetadataApiClient | None = None
        if settings.discover == "metadata_api" and not settings.metadata_api_url:
            raise ConfigError("gordo: discover: metadata_api needs metadata_api_url "
                              "(and metadata_api_subscription_key)")
        self._joiner = WindowJoiner(self._execute_range, self._share, settings.windows_per_request)
        self.skipped: dict[str, str] = {}
        """Projects left out of the last listing, with the reason."""
        if not settings.discover:
            for project in self.projects():  # each configured project's settings checked at start-up
                self.client(project)

    @classmethod
    def from_settings(cls, settings: GordoSettings, components: Any) -> GordoProjects:
        # The sensor provider is built on first use: listing models needs no sensor source.
        return cls(with_pool_for(settings, components), sensor_source=lambda: components.sensor_data)

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.close()
        if self._discovery is not None:
            self._discovery.http.close()
        if self._prevent is not None:
            self._prevent.close()

    # ------------------------------------------------ projects

    def projects(self) -> list[str]:
        """The configured projects, or the discovered ones (asked again at every call)."""
        if self.settings.discover == "kubernetes":
            return self._kubernetes().project_names()
        if self.settings.discover == "metadata_api":
            return self._metadata_api().projects()
        return list(self.settings.projects) or [self.settings.project]

    def _metadata_api(self) -> MetadataApiClient:
        if self._prevent is None:
            settings = MetadataApiSettings(base_url=self.settings.metadata_api_url,
                                           subscription_key=self.settings.metadata_api_subscription_key,
                                           timeout=self.settings.timeout, max_retries=self.settings.max_retries,
                                           retry_base_delay=self.settings.retry_base_delay)
            self._prevent = MetadataApiClient(settings, owner="gordo: discover: metadata_api")
        return self._prevent

    def _kubernetes(self) -> GordoKubernetes:
        if self._discovery is None:
            target = resolve_kubernetes(self.settings, self._environ, self._service_account_dir)
            if target is None:
                raise ConfigError("gordo: discover: kubernetes needs the Kubernetes API (kubernetes_api_url, or a "
                                  "service account in the cluster)")
            retry = RetryPolicy(max_retries=self.settings.max_retries,
                                base_delay=self.settings.retry_base_delay.total_seconds(),
                                max_delay=self.settings.retry_max_delay.total_seconds())
            self._discovery = GordoKubernetes(target, "", self.settings.timeout, retry)
        return self._discovery

    def client(self, project: str) -> GordoModels:
        """The project's client, built on first use. A project neither configured nor discovered is unknown."""
        with self._lock:
            client = self._clients.get(project)
            if client is not None:
                return client
        if not self.settings.discover and project not in self.projects():
            raise UnknownModelError(f"gordo: project {project!r} is not configured (projects: "
                                    f"{', '.join(self.projects())})")
        base_url = self.settings.project_urls.get(project) or self.settings.base_url
        settings = replace(self.settings, project=project, projects=[], base_url=base_url, discover="")
        client = GordoModels(settings, sensors=self._sensors, sensor_source=self._sensor_provider,
                             kubernetes_environ=self._environ, service_account_dir=self._service_account_dir)
        with self._lock:
            return self._clients.setdefault(project, client)

    def _sensor_provider(self) -> SensorDataProvider:
        if self._sensors is None and self._sensor_source is not None:
            self._sensors = self._sensor_source()
        if self._sensors is None:
            raise ConfigError("gordo: executing models needs a sensor_data provider")
        return self._sensors

    # ------------------------------------------------ ModelInformationProvider

    def get_model_list(self) -> list[ModelRef]:
        """Every project's models, listed concurrently. A project that cannot be listed is skipped for this
        call with a warning; when every project fails for a transient reason, the listing fails (the
        scheduler retries the cycle)."""
        projects = self.projects()
        if not projects:
            log.warning("gordo: no projects %s", "discovered" if self.settings.discover else "configured")
            return []
        listed: dict[str, list[str] | LatigoError] = {}
        with ThreadPoolExecutor(max_workers=min(self.settings.project_parallelism, len(projects)),
                                thread_name_prefix="gordo-projects") as pool:
            for project, result in zip(projects, pool.map(self._list_project, projects), strict=True):
                listed[project] = result
        failures = {p: r for p, r in listed.items() if isinstance(r, LatigoError)}
        for project, error in failures.items():
            if self.skipped.get(project) != str(error):
                log.warning("gordo project %s skipped this cycle: %s", project, error)
        for project in set(self.skipped) - set(failures):
            log.info("gordo project %s is listed again", project)
        self.skipped = {p: str(e) for p, e in failures.items()}
        if len(projects) == 1 and failures:
            raise next(iter(failures.values()))
        if failures and len(failures) == len(projects) and all(isinstance(e, TransientError)
                                                                for e in failures.values()):
            raise TransientError(f"gordo: every project failed to list, e.g. {next(iter(failures.values()))}")
        return [ModelRef(project, name) for project, names in listed.items() if isinstance(names, list)
                for name in names]

    def _list_project(self, project: str) -> list[str] | LatigoError:
        try:
            return self.client(project).get_model_list()
        except LatigoError as exc:
            return exc

    def model_exists(self, model: ModelRef) -> bool:
        try:
            return self.client(model.project).model_exists(model.name)
        except UnknownModelError:
            return False

    def get_model_info(self, model: ModelRef) -> ModelInfo:
        return self.client(model.project).get_model_info(model.name)

    def check_report(self) -> str:
        """`latigo models check`: each project's report, then OK or PROBLEMS FOUND for all of them."""
        parts, ok = [], True
        for project in self.projects():
            try:
                report = check_models(self.client(project))
            except LatigoError as exc:
                parts.append(f"gordo project {project}: cannot be checked: {exc}\n")
                ok = False
                continue
            ok = ok and report["ok"]
            parts.append(format_check_report(report).rsplit("\n", 2)[0] + "\n")
        return "".join(parts) + ("OK\n" if ok else "PROBLEMS FOUND\n")

    # ------------------------------------------------ ModelExecutionProvider

    def execute_model(self, model: ModelRef, start: datetime, end: datetime) -> PredictionFrame:
        """The window's rows; consecutive windows of the model that wait at the same time share one request
        (windows_per_request)."""
        return self._joiner.execute(model, TimeRange(start, end))

    def _execute_range(self, model: ModelRef, span: TimeRange) -> PredictionFrame:
        return self.client(model.project).execute_model(model.name, span.start, span.end)

    def _share(self, model: ModelRef, frame: PredictionFrame, window: TimeRange) -> PredictionFrame:
        """The rows of the buckets that complete in `window` (as executing the window alone selects them)."""
        buckets = predicted_buckets(window, self.client(model.project).get_model_info(model.name).resolution)
        return frame.within(buckets) if buckets is not None else frame.with_rows([])

    def get_model_status(self, model: ModelRef) -> ModelStatus:
        return self.client(model.project).get_model_status(model.name)

    def register_model(self, model_data: Mapping[str, Any]) -> None:
        """Into the project the description names (`project:`), or the one project configured."""
        project = str(model_data.get("project") or "")
        if not project:
            projects = [] if self.settings.discover else self.projects()
            if len(projects) != 1:
                raise ConfigError("gordo: the machine description names no `project:`, and several projects are "
                                  "served; add `project: NAME` to it")
            project = projects[0]
        machine = {key: value for key, value in model_data.items() if key != "project"}
        self.client(project).register_model(machine)

    def unregister_model(self, model: ModelRef) -> None:
        self.client(model.project).unregister_model(model.name)


def _check(settings: GordoSettings) -> None:
    """One way of naming the projects, each name usable in a URL."""
    ways = [name for name, given in (("project", settings.project), ("projects", settings.projects),
                                      ("discover", settings.discover)) if given]
    if not settings.base_url and not (settings.projects and all(p in settings.project_urls
                                                                 for p in settings.projects)):
        raise ConfigError("gordo: base_url is required (or a project_urls entry for every project)")
    if len(ways) != 1:
        raise ConfigError("gordo: name the projects one way: project: NAME, projects: [A, B, ...] or discover: "
                          f"kubernetes | metadata_api (given: {', '.join(ways) or 'none'})")
    for project in [settings.project, *settings.projects, *settings.project_urls]:
        if project and (project != project.strip() or "/" in project):
            raise ConfigError(f"gordo: project {project!r} is not a Gordo project name")
    duplicates = sorted({p for p in settings.projects if settings.projects.count(p) > 1})
    if duplicates:
        raise ConfigError(f"gordo: projects lists {', '.join(duplicates)} more than once")
    unused = sorted(set(settings.project_urls) - set(settings.projects or [settings.project]))
    if unused and not settings.discover:
        raise ConfigError(f"gordo: project_urls names project(s) not served: {', '.join(unused)}")
