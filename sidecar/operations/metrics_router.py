"""GET /metrics: Prometheus' text format, for the monitoring a hospital already runs.

The process's counters (sidecar.operations.metrics, prometheus_client's process-wide registry:
also the process's memory, CPU and open files) followed by this scrape's backlogs, read from the
database (sidecar.operations.metrics_backlog). Open by default, as monitoring scrapes it and it
holds counts only (no patient data in any label); METRICS_TOKEN set, a scrape must send it as a
bearer token. METRICS_ENABLED false: 404, as if there were no such page.

Not in the OpenAPI document: it is no part of the API's contract but Prometheus' exposition
format (text/plain, versioned by its content type), documented in the README's operations
section; its answer is not JSON, which the API's schema checks expect of every documented
operation.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import CollectorRegistry

from sidecar.core.dependencies import BearerDep, ClockDep, EngineDep, SettingsDep, provide
from sidecar.core.errors import NotAuthenticated, UnknownRecord
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.operations.metrics_backlog import BacklogCollector
from sidecar.orders.listener import OrderListener
from sidecar.reading.policy import ReadingPolicyDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def metrics(
    settings: SettingsDep,
    bearer: BearerDep,
    engine: EngineDep,
    clock: ClockDep,
    orthanc: Annotated[OrthancClient, Depends(provide(OrthancClient))],
    listener: Annotated[OrderListener, Depends(provide(OrderListener))],
    policy: ReadingPolicyDep,
) -> Response:
    if not settings.metrics_enabled:
        raise UnknownRecord("metrics are turned off (METRICS_ENABLED)")
    if settings.metrics_token and not (
        bearer is not None
        and hmac.compare_digest(bearer.credentials.encode(), settings.metrics_token.encode())
    ):
        raise NotAuthenticated("GET /metrics wants the bearer token METRICS_TOKEN")
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(
        BacklogCollector(
            engine=engine,
            intake_engine=listener.intake.engine,
            orthanc=orthanc,
            policy=policy,
            node=settings.node_name,
            now=clock(),
        )
    )
    return Response(
        generate_latest(REGISTRY) + generate_latest(scrape), media_type=CONTENT_TYPE_LATEST
    )
