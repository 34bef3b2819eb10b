"""The official Time Series API client (`omnia-timeseries`) pointed at the local Data API server.

The client is the judge of the test server: whatever it sends, the server must answer as the real API
does. It authenticates through an azure-core TokenCredential; here a credential that asks the local
server for a token, so a server with client credentials configured accepts the client's requests.
"""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken
from omnia_timeseries import TimeseriesAPI, TimeseriesEnvironment

from tests.support.data_api_server import DataApiServer


class ServerCredential:
    """A TokenCredential whose tokens the local Data API server issued (and so accepts)."""

    def __init__(self, server: DataApiServer) -> None:
        self.server = server
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.server.issue_token(), int(time.time()) + 3600)


def official_client(server: DataApiServer) -> TimeseriesAPI:
    """An unmodified `TimeseriesAPI` whose base URL is the local server's."""
    api = TimeseriesAPI(ServerCredential(server), TimeseriesEnvironment.Test())
    api._base_url = server.url  # the client's one place for its address (it defaults to Equinor's gateway)
    return api
