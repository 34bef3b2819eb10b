"""Gordo: latigo's production model server — one project's adapter, composed of its parts.

`GordoModels` is what latigo's `gordo` provider (latigo.models.gordo_projects.GordoProjects) keeps per
project: the methods of ModelInformationProvider and ModelExecutionProvider for the models of one project
(named without it; GordoProjects turns a ModelRef into project and name), each handed to the part that
does it:

- gordo_client: the HTTP side — connections, token, timeouts, the revision every request is pinned to;
- gordo_information: the model listing, expected models and each model's metadata (cached per revision);
- gordo_execution: predictions — the model's input read from the sensor source and posted in batches;
- gordo_registration: registration and status through the project's Gordo resource in Kubernetes.

Here too: `latigo models --check` (check_models, format_check_report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from latigo.errors import LatigoError
from latigo.http import HttpClient
from latigo.interfaces import SensorDataProvider
from latigo.model_input import ModelInput
from latigo.models.gordo_client import GordoClient
from latigo.models.gordo_execution import GordoExecution
from latigo.models.gordo_information import GordoInformation
from latigo.models.gordo_kubernetes import SERVICE_ACCOUNT_DIR, GordoKubernetes
from latigo.models.gordo_registration import GordoRegistration, connect_kubernetes
from latigo.models.gordo_settings import GordoSettings, with_pool_for
from latigo.types import ModelInfo, ModelStatus, PredictionFrame, TimeRange


class GordoModels:
    """The client of one Gordo project (models by name); see the module docstring."""

    Settings = GordoSettings

    def __init__(
        self,
        settings: GordoSettings,
        sensors: SensorDataProvider | None = None,
        kubernetes_environ: Mapping[str, str] | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        sensor_source: Callable[[], SensorDataProvider] | None = None,
    ) -> None:
        """`sensors`, or `sensor_source` to build it on first use (listing models needs no sensor source)."""
        self.client = GordoClient(settings)
        self.settings = settings
        self.information = GordoInformation(self.client)
        self.execution = GordoExecution(self.client, self.information, sensors, sensor_source)
        kubernetes = connect_kubernetes(settings, kubernetes_environ, service_account_dir, self.client.retry)
        self.registration = GordoRegistration(self.information, kubernetes)

    @classmethod
    def from_settings(cls, settings: GordoSettings, components: Any) -> GordoModels:
        # The sensor provider is built on first use: listing models needs no sensor source.
        return cls(with_pool_for(settings, components), sensor_source=lambda: components.sensor_data)

    @property
    def http(self) -> HttpClient:
        """The project's connections (their counters included)."""
        return self.client.http

    @property
    def kubernetes(self) -> GordoKubernetes | None:
        """The project's Kubernetes client; None without Kubernetes."""
        return self.registration.kubernetes

    def check_report(self) -> str:
        """`latigo models --check`: see check_models."""
        return format_check_report(check_models(self))

    def close(self) -> None:
        self.client.close()
        self.registration.close()

    def revision(self, refresh: bool = False) -> str:
        return self.client.revision(refresh)

    # ------------------------------------------------ model information

    def get_model_list(self) -> list[str]:
        return self.information.get_model_list()

    def served_models(self) -> list[str]:
        return self.information.served_models()

    def expected_models(self) -> list[str] | None:
        return self.information.expected_models()

    def survey(self, names: Sequence[str]) -> tuple[dict[str, ModelInfo], list[str], dict[str, LatigoError]]:
        return self.information.survey(names)

    def model_exists(self, name: str) -> bool:
        return self.information.model_exists(name)

    def get_model_info(self, name: str) -> ModelInfo:
        return self.information.get_model_info(name)

    # ------------------------------------------------ execution

    def execute_model(self, name: str, start: datetime, end: datetime) -> PredictionFrame:
        return self.execution.execute_model(name, start, end)

    def model_input(self, info: ModelInfo, window: TimeRange) -> ModelInput:
        return self.execution.model_input(info, window)

    # ------------------------------------------------ registration

    def get_model_status(self, name: str) -> ModelStatus:
        return self.registration.get_model_status(name)

    def register_model(self, model_data: Mapping[str, Any]) -> None:
        self.registration.register_model(model_data)

    def unregister_model(self, name: str) -> None:
        self.registration.unregister_model(name)


# ---------------------------------------------------------------- `latigo models --check`


def check_models(provider: GordoModels) -> dict[str, Any]:
    """What the server lists, which listed models lack metadata, which expected models are not built."""
    revision = provider.revision(refresh=not provider.settings.revision)
    listed = provider.served_models()
    infos, missing, errors = provider.survey(listed)
    expected = provider.expected_models()
    ready = [name for name in listed if name in infos]
    not_built = [name for name in expected if name not in infos] if expected is not None else []
    unexpected = [name for name in listed if name not in expected] if expected is not None else []
    return {
        "project": provider.settings.project,
        "base_url": provider.settings.base_url,
        "revision": revision,
        "listed": listed,
        "ready": ready,
        "without_metadata": missing,
        "errors": {name: str(error) for name, error in errors.items()},
        "expected": expected,
        "not_built": not_built,
        "unexpected": unexpected,
        "ok": not missing and not errors and not not_built,
    }


def format_check_report(report: Mapping[str, Any]) -> str:
    """The check as a few lines of text for a terminal."""
    expected = report["expected"]
    lines = [
        f"gordo project {report['project']} at {report['base_url']} (revision {report['revision'] or '?'})",
        f"  listed: {len(report['listed'])}  ready: {len(report['ready'])}  "
        f"without metadata: {len(report['without_metadata'])}  errors: {len(report['errors'])}  "
        f"expected: {'?' if expected is None else len(expected)}  not built: {len(report['not_built'])}",
    ]
    if report["without_metadata"]:
        lines.append(f"  listed without metadata: {', '.join(report['without_metadata'])}")
    for name, error in report["errors"].items():
        lines.append(f"  error {name}: {error}")
    if report["not_built"]:
        lines.append(f"  expected but not built: {', '.join(report['not_built'])}")
    if report["unexpected"]:
        lines.append(f"  served but not expected: {', '.join(report['unexpected'])}")
    if expected is None:
        lines.append("  the server does not list expected models (no /expected-models)")
    lines.append("OK" if report["ok"] else "PROBLEMS FOUND")
    return "\n".join(lines) + "\n"
