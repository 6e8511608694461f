"""Prometheus exposition (see `service.metrics` for the names and how several processes add up)."""

from __future__ import annotations

import hmac

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics
from service.errors import NotAuthenticated
from service.http.dependencies import SettingsDependency


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint(request: Request, settings: SettingsDependency) -> Response[bytes]:
    if settings.metrics_token is not None:
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.encode(), f"Bearer {settings.metrics_token}".encode()):
            raise NotAuthenticated("authorization: /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'")
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
