"""Prometheus exposition: this process's metrics (see `service.metrics` for names and scraping)."""

from __future__ import annotations

import hmac

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.errors import NotAuthenticated
from service.http.dependencies import SettingsDependency


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(request: Request, settings: SettingsDependency) -> Response[bytes]:
    if settings.metrics_token is not None:
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {settings.metrics_token}".encode()):
            raise NotAuthenticated("authorization: /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
