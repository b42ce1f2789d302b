"""The HTTP figures of GET /metrics: every request timed, by route template, method and status
(sidecar.operations.metrics.HTTP_DURATION, `http_request_duration_seconds`)."""

from __future__ import annotations

from sidecar.operations.metrics import HTTP_DURATION, METHODS, known


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One request as the access log measured it (sidecar.core.http.AccessLog, which calls this
    when METRICS_ENABLED). The `route` label is the route's template (`/api/studies/{study_id}`),
    never the path: paths carry accession numbers and patient ids, and one series per path
    would grow without bound."""
    HTTP_DURATION.labels(route, known(method, METHODS), str(status)).observe(seconds)
