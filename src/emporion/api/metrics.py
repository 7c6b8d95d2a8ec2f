"""``GET /metrics``: this replica's Prometheus metrics (observe/metrics.py). With ``[metrics] token``
set, a scrape sends ``Authorization: Bearer <token>`` (401 otherwise); without one, only a client
on a loopback address may scrape (403 otherwise). Behind a reverse proxy on the same host, set a
token: uvicorn reports the forwarded client, not the proxy."""

from __future__ import annotations

import hmac
import ipaddress

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.errors import AuthenticationFailed, NotFound, PermissionDenied
from emporion.observe.metrics import Metrics
from emporion.pipeline import Deps

PATH = "/metrics"


async def metrics(request: Request) -> Response:
    deps: Deps = request.app.state.deps
    found = deps.stages.find(Metrics)
    if found is None:
        raise NotFound("Metrics are off on this server ([metrics] enabled = false).", code="metrics_disabled")
    token = deps.settings.metrics.token
    if token:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {token}".encode()):
            raise AuthenticationFailed(
                "GET /metrics needs `Authorization: Bearer <[metrics] token>`.", code="invalid_metrics_token"
            )
    elif not _loopback(request.client.host if request.client else None):
        raise PermissionDenied("GET /metrics answers loopback clients only; set [metrics] token to scrape from elsewhere.")
    return Response(await found.render(), media_type=CONTENT_TYPE_LATEST)


def _loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


routes = [Route(PATH, metrics, methods=["GET"])]
