"""The service's life: what runs under the cluster's leases, the start-up that must succeed
before serving (migrations, the first administrator, joining the cluster, the worklist rebuilt),
and the listeners and background workers started and stopped around the serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from sidecar import tables
from sidecar.accounts.service import bootstrap_admin
from sidecar.analyses.claim_timeout import ClaimTimeout
from sidecar.analyses.runner import AnalysisRunner
from sidecar.core.cluster import Cluster
from sidecar.core.database import migrate, start_up_lock
from sidecar.core.dependencies import Services
from sidecar.core.settings import Settings
from sidecar.events.hub import EventHub
from sidecar.events.retention import EventRetention
from sidecar.findings.escalation import FindingEscalation, FindingWorkers
from sidecar.findings.notifications import FindingNotifier
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.sync import OrthancSync
from sidecar.mpps.scp import MppsListener
from sidecar.orders.events import OrderEvents
from sidecar.orders.listener import OrderListener
from sidecar.patients.image_updates import ImageUpdater
from sidecar.reading.overdue import ReadingOverdue
from sidecar.results.outbox import ResultOutbox
from sidecar.studies.deidentify_sweep import DeidentificationSweep
from sidecar.studies.removal_worker import ImageRemover
from sidecar.viewer.front import ViewerFront
from sidecar.worklist.publisher import WorklistPublisher

log = logging.getLogger("sidecar")


#: The background jobs done by one node of the cluster at a time (sidecar.core.cluster): their
#: work is in tables, so whichever node holds a job's lease finds all of it. Every node runs
#: its own order events (its worklist) and de-identification sweep (its Orthanc's jobs).
LEASED_JOBS = (
    ResultOutbox,
    FindingNotifier,
    FindingEscalation,
    ReadingOverdue,
    OrthancSync,
    ImageUpdater,
    ImageRemover,
    EventRetention,
    ClaimTimeout,
)


def run_under_leases(services: Services, cluster: Cluster) -> None:
    findings = services.get(FindingWorkers)
    workers = [services.find(kind) for kind in LEASED_JOBS] + [
        findings.notifier,
        findings.escalation,
    ]
    for worker in {id(w): w for w in workers if w is not None}.values():
        worker.run_under_lease(cluster)


def start_up(services: Services) -> None:
    """The I/O before serving that must succeed first: the schema migrated, the first
    administrator created, the worklist rebuilt from the database (a change committed but not
    written, in a crash, is repaired)."""
    engine, settings = services.get(Engine), services.get(Settings)
    with start_up_lock(engine):  # nodes started together set the database up in turn
        migrate(engine, tables.metadata)
        bootstrap_admin(engine, settings)
    services.get(Cluster).join()  # NodeRefused: this node may not run beside the others
    publisher = services.find(WorklistPublisher)
    if publisher is not None:
        offered = publisher.reconcile()
        log.info("worklist reconciled: %d scheduled procedure steps offered", offered)


def lifespan(services: Services) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(start_up, services)
        settings, cluster = services.get(Settings), services.get(Cluster)
        cluster.start()
        listener, order_events = services.get(OrderListener), services.get(OrderEvents)
        sync, findings = services.get(OrthancSync), services.get(FindingWorkers)
        outbox = services.find(ResultOutbox)
        await listener.start()
        mpps = services.get(MppsListener)
        await asyncio.to_thread(mpps.start)
        order_events.start()
        image_updater, remover = services.get(ImageUpdater), services.get(ImageRemover)
        sweep = services.get(DeidentificationSweep)
        runner = services.get(AnalysisRunner)
        if settings.reconcile_enabled:
            sync.start()
            image_updater.start()  # work left queued by the last run too
            remover.start()  # removals left waiting by the last run too
            sweep.start()  # copies the last run abandoned first
            runner.start()  # on every node: tasks whose node died are taken again
        if outbox is not None:
            outbox.start()  # results left pending by the last run go first
        if findings.notifier is not None:
            findings.notifier.start()  # notifications left pending by the last run too
        findings.escalation.start()
        overdue = services.get(ReadingOverdue)
        overdue.start()
        retention = services.get(EventRetention)
        retention.start()
        claim_timeout = services.get(ClaimTimeout)
        claim_timeout.start()  # claims left silent while no node ran are released first
        try:
            yield
        finally:
            await services.get(EventHub).stop()  # the open streams end
            await listener.stop()
            await asyncio.to_thread(mpps.stop)
            if outbox is not None:
                await asyncio.to_thread(outbox.stop)
            await asyncio.to_thread(findings.escalation.stop)
            await asyncio.to_thread(overdue.stop)
            await asyncio.to_thread(retention.stop)
            await asyncio.to_thread(claim_timeout.stop)
            if findings.notifier is not None:
                await asyncio.to_thread(findings.notifier.stop)
            await asyncio.to_thread(sync.stop)
            await asyncio.to_thread(image_updater.stop)
            await asyncio.to_thread(remover.stop)
            await asyncio.to_thread(sweep.stop)
            await asyncio.to_thread(runner.stop)
            await asyncio.to_thread(order_events.stop)
            await asyncio.to_thread(cluster.stop)  # after the workers: none runs unleased
            publisher = services.find(WorklistPublisher)
            if publisher is not None:
                await asyncio.to_thread(publisher.close)
            services.get(OrthancClient).close()
            await services.get(ViewerFront).proxy.aclose()
            listener.intake.engine.dispose()
            services.get(Engine).dispose()

    return lifespan
