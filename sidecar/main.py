"""The application factory: every service built once and registered by its type
(sidecar.core.dependencies.Services) and the routers of every domain. What runs before and
around the serving (migrations, joining the cluster, the workers) is sidecar.lifecycle.

Building the app touches no database and no socket: `create_app` only builds objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from hl7.mllp.client import MllpClient
from sidecar.access.emergency import router as emergency_access_router
from sidecar.accounts.audit_router import router as audit_router
from sidecar.accounts.auth_router import auth_router
from sidecar.accounts.router import users_router
from sidecar.analyses.claim_timeout import ClaimTimeout
from sidecar.analyses.router import router as analyses_router
from sidecar.analyses.wiring import add_analyses
from sidecar.analyses.workitems_router import router as workitems_router
from sidecar.core.api_errors import document_error_format, install_error_handlers
from sidecar.core.cluster import Cluster
from sidecar.core.database import make_engine
from sidecar.core.dependencies import Clock, Services, attach
from sidecar.core.http import AccessLog, RefuseNul, SecurityHeaders
from sidecar.core.modalities import parse_modalities
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.events.hub import EventHub
from sidecar.events.retention import EventRetention
from sidecar.events.router import router as events_router
from sidecar.findings.escalation import FindingEscalation, FindingWorkers
from sidecar.findings.notifications import FindingNotifier
from sidecar.findings.policy import FindingPolicy
from sidecar.findings.router import router as findings_router
from sidecar.findings.service import flagged_findings
from sidecar.ingest.deletion_watch import DeletionWatch
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.router import router as ingest_router
from sidecar.ingest.sync import OrthancSync
from sidecar.lifecycle import lifespan, run_under_leases
from sidecar.mpps.router import router as performed_steps_router
from sidecar.mpps.scp import MppsListener
from sidecar.operations.alarms import DiskWatch
from sidecar.operations.health import router as health_router
from sidecar.operations.metrics import metered_hl7
from sidecar.operations.metrics_http import observe_request
from sidecar.operations.metrics_router import router as metrics_router
from sidecar.orders.events import ORDER_CHANGES_CHANNEL, OrderEvents
from sidecar.orders.listener import OrderListener
from sidecar.orders.router import router as orders_router
from sidecar.patients.image_updates import ImageUpdater
from sidecar.patients.intake import HospitalIntake
from sidecar.patients.router import router as patients_router
from sidecar.procedures.router import router as procedures_router
from sidecar.reading.analytics_router import router as analytics_router
from sidecar.reading.overdue import ReadingOverdue
from sidecar.reading.policy import ReadingPolicy
from sidecar.reading.router import router as reading_router
from sidecar.reading.rules import study_ready
from sidecar.reading.rules_router import router as assignment_rules_router
from sidecar.reports.pdf import gather, render_pdf
from sidecar.reports.router import router as reports_router
from sidecar.reports.templates_router import router as report_templates_router
from sidecar.results.outbox import ResultOutbox
from sidecar.results.router import router as results_router
from sidecar.results.routing import ResultRouting
from sidecar.studies.deidentify_router import router as deidentify_router
from sidecar.studies.deidentify_sweep import DeidentificationSweep
from sidecar.studies.image_access import router as image_access_router
from sidecar.studies.images_router import images_router
from sidecar.studies.removal_worker import ImageRemover
from sidecar.studies.removals_router import router as removals_router
from sidecar.studies.router import router as studies_router
from sidecar.viewer.front import ViewerFront, ViewerLinks, build_viewer_front, viewer_links
from sidecar.viewer.headers import sidecar_headers
from sidecar.viewer.router import router as viewer_router
from sidecar.viewer.stow_router import router as stow_router
from sidecar.web.admin_page import router as admin_page_router
from sidecar.web.admin_setup_page import router as admin_setup_page_router
from sidecar.web.analytics_page import router as analytics_page_router
from sidecar.web.errors import install_page_errors
from sidecar.web.home import router as home_page_router
from sidecar.web.orders_page import router as orders_page_router
from sidecar.web.results_page import router as results_page_router
from sidecar.web.router import router as web_router
from sidecar.web.session import check_csrf
from sidecar.web.study_page import router as study_page_router
from sidecar.web.worklist_page import router as worklist_page_router
from sidecar.worklist.directory import WorklistDirectory
from sidecar.worklist.publisher import WorklistPublisher, zone_of

log = logging.getLogger("sidecar")

ROUTERS = (
    auth_router,
    users_router,
    studies_router,
    images_router,
    image_access_router,
    removals_router,
    deidentify_router,
    orders_router,
    patients_router,
    procedures_router,
    performed_steps_router,
    reports_router,
    report_templates_router,
    reading_router,
    assignment_rules_router,
    analytics_router,
    findings_router,
    results_router,
    ingest_router,
    audit_router,
    emergency_access_router,
    health_router,
    metrics_router,
    # UPS-RS under /dicom-web/workitems, before the viewer's /dicom-web proxy (included last).
    workitems_router,
    stow_router,
    events_router,
    analyses_router,
)

# The pages under /app/ (sidecar/web), one router per page group.
PAGE_ROUTERS = (
    home_page_router,
    worklist_page_router,
    study_page_router,
    orders_page_router,
    results_page_router,
    analytics_page_router,
    admin_page_router,
    admin_setup_page_router,
)


def create_app(
    settings: Settings | None = None,
    *,
    orthanc: OrthancClient | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """`orthanc` may be injected (tests pass a client over a mock transport); `clock` is what
    critical findings read the time from (tests advance a fake one)."""
    settings = settings or Settings()
    services = build_services(settings, orthanc=orthanc, clock=clock)
    app = FastAPI(
        title="Radiology integration sidecar",
        summary="Studies, orders, reports and audit beside Orthanc",
        version="0.1.0",
        lifespan=lifespan(services),
    )
    attach(app, services)
    install_error_handlers(app)
    # Refusals under /app/ answered as pages (the login form, an error page), the API's as JSON.
    install_page_errors(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(RefuseNul)
    # Outside RefuseNul: its refusals carry the headers too.
    app.add_middleware(SecurityHeaders, headers=sidecar_headers(settings.public_viewer_url))
    # Off: no request is timed for the metrics (the access log's own measure is not passed on).
    app.add_middleware(AccessLog, observers=[observe_request] if settings.metrics_enabled else [])
    for router in ROUTERS:
        app.include_router(router)
    # The pages, each with the CSRF check on its forms; then their static files and the 404
    # page of any other /app/ path; all before the viewer's catch-all.
    for router in PAGE_ROUTERS:
        app.include_router(router, dependencies=[Depends(check_csrf)])
    app.include_router(web_router)
    # Last: its catch-all serves the viewer's client-side routes.
    app.include_router(viewer_router)
    return app


def build_services(
    settings: Settings, *, orthanc: OrthancClient | None, clock: Callable[[], datetime]
) -> Services:
    """Every long-lived object of the service, wired together; nothing is started."""
    services = Services()
    services.add(settings)
    services.add(Clock(clock))
    engine = services.add(make_engine(settings.database_url), Engine)
    orthanc = services.add(
        orthanc
        or OrthancClient(
            settings.orthanc_url,
            username=settings.orthanc_username,
            password=settings.orthanc_password,
            timeout=settings.orthanc_timeout,
        ),
        OrthancClient,
    )
    cluster = services.add(
        Cluster(
            engine,
            node_name=settings.node_name,
            lease_seconds=settings.cluster_lease_seconds,
            jwt_secret=settings.jwt_secret,
            database_url=settings.database_url,
        )
    )
    order_events = services.add(OrderEvents())
    # Orders changed on any node (a trigger notifies at each commit, sidecar.orders.models):
    # this node's worklist follows them too.
    cluster.subscribe(ORDER_CHANGES_CHANNEL, lambda payload: order_events.announce_id(int(payload)))
    zone = zone_of(settings.timezone)
    if settings.worklist_enabled:
        assert settings.worklist_dir is not None
        # Not fsynced: the database is the source of truth and every start rebuilds the
        # directory from it (publisher.reconcile), so a crash cannot leave it wrong for long,
        # while an fsync per order contends with the database's own commits (measured: the
        # worklist writer took half the sidecar's time under HL7 load). Renames stay atomic.
        # Written in batches by a child process, off the GIL the HL7 intake needs.
        publisher = services.add(
            WorklistPublisher(
                WorklistDirectory(settings.worklist_dir, zone, durable=False),
                settings.database_url,
                writer_process=True,
            )
        )
        order_events.listeners.append(publisher.publish_changes)
        # Order changes notified while this node was not listening: rebuilt from the database.
        cluster.on_reconnect(publisher.reconcile)
    # The HL7 intake (orders and ADT) with its own pool, without a ping before each message
    # (OrderIntake.handle).
    intake = HospitalIntake(
        make_engine(settings.database_url, pre_ping=False),
        zone=zone,
        announce=order_events.announce_id,
        facility_field=settings.order_facility_field,
    )
    listener = services.add(
        OrderListener(
            intake, enabled=settings.mllp_enabled, host=settings.mllp_host, port=settings.mllp_port
        )
    )
    if settings.metrics_enabled:  # each message counted by type and ACK code, its ACK timed
        listener.handler = metered_hl7(intake)
    department = settings.department_name
    routing = services.add(
        ResultRouting(
            enabled=bool(settings.his_mllp_host),
            sending_application=settings.hl7_application,
            sending_facility=settings.hl7_facility,
            receiving_application=settings.his_application,
            receiving_facility=settings.his_facility,
            send_preliminary=settings.results_send_preliminary,
            send_status_updates=settings.his_status_updates,
            zone=zone,
            finding_sources=[flagged_findings],
            pdf_source=(
                (lambda session, report: render_pdf(gather(session, report, department)))
                if settings.results_embed_pdf
                else None
            ),
        )
    )
    outbox: ResultOutbox | None = None
    if routing.enabled:
        outbox = services.add(
            ResultOutbox(
                engine,
                lambda: MllpClient(
                    settings.his_mllp_host,
                    settings.his_mllp_port,
                    timeout=settings.his_mllp_timeout,
                ),
                max_delay=settings.result_retry_max_delay,
                on_order_changed=order_events.announce,
            )
        )
    reading_policy = services.add(ReadingPolicy.from_settings(settings))
    services.add(
        MppsListener(
            engine,
            routing,
            enabled=settings.mpps_enabled,
            host=settings.mpps_host,
            port=settings.mpps_port,
            ae_title=settings.mpps_aet,
            zone=zone,
            modalities=parse_modalities(settings.dicom_modalities),
            on_orders_changed=order_events.announce_ids,
            on_status_queued=outbox.wake if outbox is not None else None,
        )
    )
    # AI analysis: the analyzers and their runner; a stable study's auto analyzers.
    auto_analyses = add_analyses(services, settings, clock=clock)
    deletions = services.add(
        DeletionWatch(
            engine, orthanc, reconcile_every=settings.orthanc_reconcile_seconds, clock=clock
        )
    )
    services.add(
        OrthancSync(
            engine,
            orthanc,
            deletions=deletions,
            interval=settings.reconcile_interval,
            on_order_changed=order_events.announce,
            result_routing=routing,
            on_result_queued=outbox.wake if outbox is not None else None,
            modality_facilities=settings.modality_facility_map(),
            default_issuer=settings.default_issuer,
            on_ready_to_read=lambda session, study: (
                study_ready(session, study, now=clock()),
                auto_analyses(session, study),
            ),
            stable_age=settings.stable_age,
        )
    )
    # Stored images follow their patient's merges and corrections (IHE PIR).
    services.add(ImageUpdater(engine, orthanc, max_delay=settings.result_retry_max_delay))
    # Image removals (IOCM rejection) Orthanc could not perform at once, until done.
    services.add(ImageRemover(engine, orthanc, max_delay=settings.result_retry_max_delay))
    # De-identified copies abandoned midway (a crash, a timeout): deleted once Orthanc is done.
    services.add(
        DeidentificationSweep(
            engine,
            orthanc,
            node_name=settings.node_name,
            node_gone_after=settings.cluster_lease_seconds,
            clock=clock,
        )
    )
    # Critical findings: notified through a webhook outbox, escalated by deadline.
    policy = services.add(FindingPolicy.from_settings(settings))
    notifier: FindingNotifier | None = None
    if policy.notify:
        notifier = services.add(
            FindingNotifier(
                engine,
                settings.notification_service_url,
                token=settings.notification_service_token,
                timeout=settings.notification_timeout,
                max_delay=settings.notification_retry_max_delay,
                clock=clock,
            )
        )
    escalation = FindingEscalation(
        engine, policy, clock=clock, on_queued=notifier.wake if notifier else None
    )
    services.add(FindingWorkers(notifier, escalation))
    services.add(
        ReadingOverdue(
            engine, reading_policy, clock=clock, on_queued=notifier.wake if notifier else None
        )
    )
    services.add(
        DiskWatch(
            {"orthancStorage": settings.orthanc_storage_dir, "dataDirectory": settings.data_dir},
            settings.disk_min_free_percent,
        )
    )
    # Live events: one reader of the event table per process; old events pruned.
    services.add(EventHub(engine))
    services.add(
        EventRetention(engine, timedelta(hours=settings.events_retention_hours), clock=clock)
    )
    front = services.add(build_viewer_front(settings, engine, clock=clock), ViewerFront)
    services.add(viewer_links(settings, front), ViewerLinks)
    # Work items whose performer went silent, released (the performer's cached access too).
    services.add(
        ClaimTimeout(
            engine,
            timedelta(minutes=settings.ai_claim_timeout_minutes),
            clock=clock,
            on_released=front.access.forget,
        )
    )
    run_under_leases(services, cluster)
    return services


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = document_error_format(
            get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
        )
    return app.openapi_schema
