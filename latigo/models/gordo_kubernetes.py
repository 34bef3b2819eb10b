"""Registering models with Gordo: machine descriptions validated before sending, and the project's
`Gordo` custom resource edited through the Kubernetes API (Gordo's controller builds `Model`s)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from latigo.durations import parse_frequency
from latigo.errors import (
    PermanentError,
    TransientError,
)
from latigo.http import HttpClient, RetryPolicy

if TYPE_CHECKING:
    from latigo.models.gordo_settings import GordoSettings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONFLICT_ATTEMPTS = 5
PROJECT_LABEL = "applications.gordo.equinor.com/project-name"
MODEL_LABEL = "applications.gordo.equinor.com/model-name"


# ---------------------------------------------------------------- machines (registration input)

MACHINE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MACHINE_KEYS = ("name", "dataset", "model", "metadata", "runtime", "evaluation")


def check_machine_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise PermanentError("machine name is required")
    if len(name) > 63 or not MACHINE_NAME.match(name):
        raise PermanentError(f"machine name {name!r} is invalid: lowercase letters, digits and dashes, "
                             "starting and ending with a letter or digit, at most 63 characters")
    return name


def validate_machine(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check a Gordo machine before sending it; errors name the field. Returns a JSON-ready copy
    (sections given as YAML text stay text, as Gordo accepts both)."""
    if not isinstance(data, Mapping):
        raise PermanentError(f"machine: expected a mapping, got {type(data).__name__}")
    name = check_machine_name(data.get("name"))
    unknown = sorted(str(key) for key in data if key not in MACHINE_KEYS)
    if unknown:
        raise PermanentError(f"machine {name}: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(MACHINE_KEYS)}")
    dataset = _section(name, data, "dataset", required=True)
    _check_dataset(name, dataset)
    model = _section(name, data, "model", required=True)
    if not model:
        raise PermanentError(f"machine {name}: model is empty")
    for optional in ("metadata", "runtime", "evaluation"):
        _section(name, data, optional, required=False)
    return {key: _json_ready(value) for key, value in data.items()}


def _section(name: str, data: Mapping[str, Any], key: str, required: bool) -> dict[str, Any]:
    raw = data.get(key)
    if raw is None:
        if required:
            raise PermanentError(f"machine {name}: {key} is required")
        return {}
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise PermanentError(f"machine {name}: {key} is not valid YAML: {exc}") from None
        raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise PermanentError(f"machine {name}: {key} must be a mapping, got {type(raw).__name__}")
    return dict(raw)


def _check_dataset(name: str, dataset: Mapping[str, Any]) -> None:
    tags = dataset.get("tags", dataset.get("tag_list"))
    if not isinstance(tags, list) or not tags:
        raise PermanentError(f"machine {name}: dataset.tags is required (a non-empty list of tag names)")
    targets = dataset.get("target_tag_list")
    if targets is not None and not isinstance(targets, list):
        raise PermanentError(f"machine {name}: dataset.target_tag_list must be a list")
    dates = {key: _zoned_date(name, dataset, key) for key in ("train_start_date", "train_end_date")}
    if dates["train_end_date"] <= dates["train_start_date"]:
        raise PermanentError(f"machine {name}: dataset.train_end_date must be after dataset.train_start_date")
    if dataset.get("resolution") is not None:
        try:
            parse_frequency(dataset["resolution"])
        except ValueError as exc:
            raise PermanentError(f"machine {name}: dataset.resolution {exc}") from None


def _zoned_date(name: str, dataset: Mapping[str, Any], key: str) -> datetime:
    value = dataset.get(key)
    where = f"machine {name}: dataset.{key}"
    if value is None:
        raise PermanentError(f"{where} is required")
    if isinstance(value, date) and not isinstance(value, datetime):
        raise PermanentError(f"{where} {value.isoformat()} has no time and timezone")
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise PermanentError(f"{where} {text!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise PermanentError(f"{where} {text} has no timezone (add +00:00 or Z for UTC)")
    return value.astimezone(timezone.utc)


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------- Kubernetes


@dataclass(frozen=True)
class KubernetesTarget:
    """Where and how to reach the Kubernetes API."""

    api_url: str
    namespace: str
    token: str = field(default="", repr=False)
    token_file: str = ""
    ca_file: str = ""


def resolve_kubernetes(
    settings: GordoSettings, environ: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> KubernetesTarget | None:
    """The explicit API URL + token from the settings, else the in-cluster service account, else None."""
    account = Path(service_account_dir)

    def read(name: str) -> str:
        try:
            return (account / name).read_text().strip()
        except OSError:
            return ""

    namespace = settings.kubernetes_namespace or read("namespace") or "default"
    token_file = str(account / "token") if (account / "token").is_file() else ""
    ca_file = settings.kubernetes_ca_file or (str(account / "ca.crt") if (account / "ca.crt").is_file() else "")
    if settings.kubernetes_api_url:
        return KubernetesTarget(settings.kubernetes_api_url.rstrip("/"), namespace, settings.kubernetes_token,
                                "" if settings.kubernetes_token else token_file,
                                ca_file if settings.kubernetes_api_url.startswith("https") else "")
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host or not (settings.kubernetes_token or token_file):
        return None
    host = f"[{host}]" if ":" in host else host
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    return KubernetesTarget(f"https://{host}:{port}", namespace, settings.kubernetes_token,
                            "" if settings.kubernetes_token else token_file, ca_file)


class GordoKubernetes:
    """The project's Gordo resource and its Model resources, through the Kubernetes API."""

    def __init__(self, target: KubernetesTarget, project: str, timeout: timedelta, retry: RetryPolicy) -> None:
        self.target, self.project = target, project
        has_token = bool(target.token or target.token_file)
        self.http = HttpClient("kubernetes", timeout=timeout.total_seconds(), retry=retry,
                               token=self._bearer if has_token else None, pool_size=2)
        if target.ca_file:
            self.http.session.verify = target.ca_file
        group = f"{target.api_url}/apis/equinor.com/v1/namespaces/{quote(target.namespace, safe='')}"
        self.gordos_url = f"{group}/gordos"
        self.gordo_url = f"{group}/gordos/{quote(project, safe='')}"
        self.models_url = f"{group}/models"

    def _bearer(self, refresh: bool) -> str:
        """The configured token, or the service account's (re-read: projected tokens rotate)."""
        if self.target.token:
            return self.target.token
        try:
            return Path(self.target.token_file).read_text().strip()
        except OSError as exc:
            raise PermanentError(f"kubernetes: cannot read the service account token: {exc.strerror}") from None

    def project_names(self) -> list[str]:
        """The Gordo resources of the namespace (`kubectl get gordos`): one project each, sorted."""
        names: list[str] = []
        params: dict[str, str] = {"limit": "500"}
        while True:
            body = self.http.request("GET", self.gordos_url, params=params).json()
            names += [str(item.get("metadata", {}).get("name")) for item in body.get("items") or []
                      if item.get("metadata", {}).get("name")]
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return sorted(set(names))
            params = {"limit": "500", "continue": str(token)}

    def get_gordo(self) -> dict[str, Any] | None:
        response = self.http.request("GET", self.gordo_url, accept={404})
        if response.status_code == 404:
            return None
        return response.json()

    def has_machine(self, name: str) -> bool:
        resource = self.get_gordo()
        if resource is None:
            return False
        config, _ = _config_of(resource)
        return any(m.get("name") == name for m in config.get("machines") or [])

    def update_machines(
        self,
        change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        create_with: dict[str, Any] | None = None,
        deploy_version: str = "",
    ) -> None:
        """Read, change the machine list, write back with the resourceVersion read; a 409 (someone
        else wrote in between) starts over from a fresh read."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            resource = self.get_gordo()
            if resource is None:
                if create_with is None or not deploy_version:
                    raise PermanentError(f"kubernetes: no Gordo resource {self.project!r} in namespace "
                                         f"{self.target.namespace!r}" + ("" if create_with is None else
                                         " (set deploy_version to let latigo create it)"))
                if self._create(create_with, deploy_version):
                    return
                continue
            config, as_text = _config_of(resource)
            config["machines"] = change([dict(m) for m in config.get("machines") or []])
            patch = {
                "metadata": {"resourceVersion": resource.get("metadata", {}).get("resourceVersion")},
                "spec": {"config": yaml.safe_dump(config, sort_keys=False) if as_text
                         else {"machines": config["machines"]}},
            }
            response = self.http.request("PATCH", self.gordo_url, accept={409}, data=json.dumps(patch),
                                         headers={"Content-Type": "application/merge-patch+json"})
            if response.status_code != 409:
                return
            log.info("kubernetes: Gordo %s changed while updating it (attempt %d/%d); re-reading",
                     self.project, attempt, CONFLICT_ATTEMPTS)
        raise TransientError(f"kubernetes: Gordo {self.project!r} kept changing under {CONFLICT_ATTEMPTS} "
                             "updates in a row")

    def _create(self, machine: dict[str, Any], deploy_version: str) -> bool:
        body = {
            "apiVersion": "equinor.com/v1",
            "kind": "Gordo",
            "metadata": {"name": self.project, "namespace": self.target.namespace},
            "spec": {"deploy-version": deploy_version, "config": {"machines": [machine]}},
        }
        response = self.http.request("POST", self.gordos_url, accept={409}, json=body)
        return response.status_code != 409  # 409: created meanwhile by someone else; update it instead

    def model_phase(self, name: str) -> str | None:
        """`status.phase` of the newest Model resource of (project, model), None when there is none."""
        selector = f"{PROJECT_LABEL}={self.project},{MODEL_LABEL}={name}"
        response = self.http.request("GET", self.models_url, params={"labelSelector": selector}, accept={404})
        if response.status_code == 404:
            return None
        items = response.json().get("items") or []
        if not items:
            return None
        newest = max(items, key=lambda item: (item.get("metadata") or {}).get("creationTimestamp") or "")
        return str((newest.get("status") or {}).get("phase") or "Unknown")


def _config_of(resource: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """spec.config as a mapping, and whether it was stored as YAML text."""
    config = (resource.get("spec") or {}).get("config") or {}
    if isinstance(config, str):
        try:
            parsed = yaml.safe_load(config) or {}
        except yaml.YAMLError as exc:
            raise PermanentError(f"kubernetes: spec.config of the Gordo resource is not valid YAML: {exc}") from None
        return dict(parsed), True
    return dict(config), False
