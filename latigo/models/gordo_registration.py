"""Registering the models of one Gordo project, and saying where a model stands.

Registration edits the machines of the project's `Gordo` custom resource through the Kubernetes API
(gordo_kubernetes); Gordo's controller builds them into `Model` resources. A model's status joins what the
Gordo server serves (gordo_information) with the phase of its `Model` resource. A module of its own: the
one part of the adapter that speaks to Kubernetes rather than to Gordo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latigo.errors import LatigoError, PermanentError, UnknownModelError
from latigo.http import RetryPolicy
from latigo.models.gordo_information import GordoInformation
from latigo.models.gordo_kubernetes import GordoKubernetes, check_machine_name, resolve_kubernetes, validate_machine
from latigo.models.gordo_settings import GordoSettings
from latigo.types import ModelStatus

log = logging.getLogger("latigo.models.gordo")  # one logger for the adapter and all its parts

Machines = list[dict[str, Any]]


def connect_kubernetes(settings: GordoSettings, environ: Mapping[str, str] | None, service_account_dir: Path,
                       retry: RetryPolicy) -> GordoKubernetes | None:
    """The project's Kubernetes client, or None where no Kubernetes is configured or found."""
    target = resolve_kubernetes(settings, os.environ if environ is None else environ, service_account_dir)
    return GordoKubernetes(target, settings.project, settings.timeout, retry) if target else None


class GordoRegistration:
    """The lifecycle of one Gordo project's models; see the module docstring."""

    def __init__(self, information: GordoInformation, kubernetes: GordoKubernetes | None) -> None:
        self.information = information
        self.settings = information.settings
        self.kubernetes = kubernetes

    def close(self) -> None:
        if self.kubernetes:
            self.kubernetes.http.close()

    def get_model_status(self, name: str) -> ModelStatus:
        """Served by Gordo = ready; otherwise the phase of its Kubernetes `Model` resource says why."""
        details: dict[str, Any] = {}
        served = None
        try:
            served = self.information.get_model_info(name)
        except UnknownModelError:
            pass
        except LatigoError as exc:
            details["gordo_error"] = str(exc)
        if served is not None:
            details.update(revision=served.revision, build_date=served.extra.get("model_creation_date"),
                           tags=list(served.tags), target_tags=list(served.target_tags))
        phase, in_resource = self._phase(name, served is None, details)
        if phase:
            details["phase"] = phase
        state, reason = _status_of(served is not None, phase, in_resource, self.settings.project, details)
        return ModelStatus(name=name, state=state, reason=reason, details=details)

    def _phase(self, name: str, unserved: bool, details: dict[str, Any]) -> tuple[str | None, bool]:
        """The phase of the model's `Model` resource, and whether an unserved model without one is a
        machine of the Gordo resource; a Kubernetes failure goes into `details`."""
        phase, in_resource = None, False
        if self.kubernetes is not None:
            try:
                phase = self.kubernetes.model_phase(name)
                if phase is None and unserved:
                    in_resource = self.kubernetes.has_machine(name)
            except LatigoError as exc:
                details["kubernetes_error"] = str(exc)
        return phase, in_resource

    def register_model(self, model_data: Mapping[str, Any]) -> None:
        """Add (or replace) the machine in the project's Gordo resource; Gordo then builds it."""
        machine = validate_machine(model_data)

        def change(machines: Machines) -> Machines:
            if not any(m.get("name") == machine["name"] for m in machines):
                return [*machines, machine]
            return [machine if m.get("name") == machine["name"] else m for m in machines]

        self._require_kubernetes("register").update_machines(change, create_with=machine,
                                                             deploy_version=self.settings.deploy_version)
        log.info("gordo project %s: machine %s registered", self.settings.project, machine["name"])

    def unregister_model(self, name: str) -> None:
        """Remove the machine from the project's Gordo resource."""
        check_machine_name(name)

        def change(machines: Machines) -> Machines:
            kept = [m for m in machines if m.get("name") != name]
            if len(kept) == len(machines):
                raise UnknownModelError(f"gordo project {self.settings.project} has no machine {name!r} "
                                        "in its Gordo resource")
            return kept

        self._require_kubernetes("unregister").update_machines(change)
        log.info("gordo project %s: machine %s unregistered", self.settings.project, name)

    def _require_kubernetes(self, action: str) -> GordoKubernetes:
        if self.kubernetes is None:
            raise PermanentError(f"gordo: cannot {action} models without Kubernetes (set kubernetes_api_url, "
                                 "or run in a cluster with a service account)")
        return self.kubernetes


def _status_of(
    served: bool, phase: str | None, in_resource: bool, project: str, details: Mapping[str, Any]
) -> tuple[str, str]:
    if served:
        return "ready", ""
    if phase == "InProgress":
        return "training", "the Model resource is being built (phase InProgress)"
    if phase == "Failed":
        return "failed", "the Model resource failed to build (phase Failed)"
    if phase == "Succeeded":
        return "training", f"built (phase Succeeded) but not served yet by gordo project {project}"
    if phase is not None:
        return "registered", f"the Model resource is not built yet (phase {phase})"
    if in_resource:
        return "registered", f"in the Gordo resource of project {project}, no Model resource yet"
    if "gordo_error" in details:
        return "unknown", f"gordo project {project} could not be asked: {details['gordo_error']}"
    return "unknown", f"not served by gordo project {project}"
