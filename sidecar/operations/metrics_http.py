"""The HTTP figures of GET /metrics: every request timed, by route template, method and status
(sidecar.operations.metrics.HTTP_DURATION, `http_request_duration_seconds`)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.operations.metrics import HTTP_DURATION, METHODS, known

#: The route of a request no route matched (a 404, a refusal before routing).
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """Times each request to the end of its body. The `route` label is the route's template
    (`/api/studies/{study_id}`), never the path: paths carry accession numbers and patient
    ids, and one series per path would grow without bound.

    Plain ASGI, as sidecar.core.http.AccessLog and for the same reason: `app.middleware("http")`
    relays every body chunk through an in-memory stream, a cost each proxied DICOMweb answer
    would pay. Added only when METRICS_ENABLED."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            HTTP_DURATION.labels(
                getattr(scope.get("route"), "path", UNMATCHED),
                known(scope["method"], METHODS),
                str(status),
            ).observe(time.perf_counter() - started)
