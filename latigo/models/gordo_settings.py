"""The Gordo provider's settings: a module of their own, so the provider and its Kubernetes registration
both read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from latigo.http import AzureAdSettings


@dataclass
class GordoSettings(AzureAdSettings):
    base_url: str
    """Server root, e.g. https://gordo.example.com (the /gordo/v0/<project> prefix is added)."""
    project: str = ""
    """One project (the one-project form of `projects`)."""
    projects: list[str] = field(default_factory=list)
    """The Gordo projects served at base_url (one model server each, behind one ingress)."""
    project_urls: dict[str, str] = field(default_factory=dict)
    """A server root per project served elsewhere than base_url."""
    discover: str = field(default="", metadata={"choices": ("", "kubernetes", "metadata_api")})
    """`kubernetes`: the projects are the Gordo resources in kubernetes_namespace; `metadata_api`: the projects
    the Metadata API lists (GET {metadata_api_url}/projects). Listed again every schedule cycle (a new
    project is picked up, a removed one is no longer scheduled)."""
    metadata_api_url: str = ""
    """`discover: metadata_api`: the Metadata API's base URL (as prediction_metadata's base_url)."""
    metadata_api_subscription_key: str = ""
    """`discover: metadata_api`: its Ocp-Apim-Subscription-Key."""
    project_parallelism: int = field(default=8, metadata={"min": 1})
    """Projects listed at once in a schedule cycle."""
    revision: str = ""
    """Pin one revision; empty = the server's latest, refreshed every `revision_refresh`."""
    batch_size: int = field(default=1000, metadata={"min": 1})
    """Rows per prediction request (a request for a windowed model holds at least its look-back + 2)."""
    timeout: timedelta = timedelta(seconds=30)
    """Read timeout: how long an answer may take (gordo-client has none: a hung connection blocks it)."""
    connect_timeout: timedelta = timedelta(seconds=5)
    """How long connecting may take: a server that is not there is known in seconds."""
    max_retries: int = field(default=3, metadata={"min": 0})
    """HTTP retries of listing and metadata requests. Prediction requests are not retried here: the
    executor retries the whole task by redelivery, so retries never multiply."""
    retry_base_delay: timedelta = timedelta(seconds=1)
    retry_max_delay: timedelta = timedelta(seconds=60)
    use_parquet: bool = True
    """Send the model input and receive the answer as parquet (Gordo's own CLI default): the same numbers
    as JSON, bit for bit (tests/e2e/test_gordo_conformance.py), for less of the server's CPU. `false`:
    JSON, e.g. for a proxy that inspects the bodies."""
    history_margin: int = field(default=5, metadata={"min": 0})
    """Rows of history sent beyond the model's offset (gordo-client sends 5)."""
    max_history: timedelta = timedelta(days=2)
    """How far before a window to look for the value a leading gap is filled from, and for the rows a
    windowed model needs when rows are missing."""
    look_ahead: bool = True
    """Read data after a window to interpolate a gap that reaches the window's end, as Gordo would over a
    longer range."""
    windows_per_request: int = field(default=8, metadata={"min": 1})
    """Consecutive windows of one model that an executor holds at once (a backlog draining) go to the server
    in one request, at most this many; 1: one request per window. Each window's rows are the same either
    way (latigo/models/window_joining.py)."""
    revision_refresh: timedelta = timedelta(minutes=5)
    parallelism: int = field(default=10, metadata={"min": 1})
    """Concurrent metadata requests when listing models."""
    pool_size: int = field(default=0, metadata={"min": 0})
    """Connections kept per project; 0: executor.concurrency + parallelism (one for every model slot and
    every concurrent metadata request, so no request waits for a connection or opens a throwaway one)."""
    kubernetes_api_url: str = ""
    """Empty: in-cluster (service account) when running in Kubernetes, else no Kubernetes."""
    kubernetes_token: str = ""
    kubernetes_namespace: str = ""
    kubernetes_ca_file: str = ""
    deploy_version: str = ""
    """Gordo deploy-version used when register_model has to create the project's Gordo resource."""


DEFAULT_MODEL_SLOTS = 8
"""executor.concurrency's default: the pool size when the executor's settings are not at hand."""


def with_pool_for(settings: GordoSettings, components: Any) -> GordoSettings:
    """`pool_size: 0` made concrete: the executor's model slots plus the metadata requests at once."""
    if settings.pool_size:
        return settings
    config = getattr(components, "config", None)
    slots = config.executor.concurrency if config is not None else DEFAULT_MODEL_SLOTS
    return replace(settings, pool_size=slots + settings.parallelism)
