"""The Gordo provider's settings: a module of their own, so the provider and its Kubernetes registration
both read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

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
    discover: str = field(default="", metadata={"choices": ("", "kubernetes")})
    """`kubernetes`: the projects are the Gordo resources in kubernetes_namespace, listed again every
    schedule cycle (a new project is picked up, a removed one is no longer scheduled)."""
    project_parallelism: int = field(default=8, metadata={"min": 1})
    """Projects listed at once in a schedule cycle."""
    revision: str = ""
    """Pin one revision; empty = the server's latest, refreshed every `revision_refresh`."""
    batch_size: int = field(default=1000, metadata={"min": 1})
    """Rows per prediction request (a request for a windowed model holds at least its look-back + 2)."""
    timeout: timedelta = timedelta(seconds=30)
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
    revision_refresh: timedelta = timedelta(minutes=5)
    parallelism: int = field(default=10, metadata={"min": 1})
    """Concurrent metadata requests when listing models."""
    pool_size: int = field(default=32, metadata={"min": 1})
    kubernetes_api_url: str = ""
    """Empty: in-cluster (service account) when running in Kubernetes, else no Kubernetes."""
    kubernetes_token: str = ""
    kubernetes_namespace: str = ""
    kubernetes_ca_file: str = ""
    deploy_version: str = ""
    """Gordo deploy-version used when register_model has to create the project's Gordo resource."""
