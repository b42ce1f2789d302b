"""The application factory: settings, database, Orthanc client and sync worker, wired once."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine
from sqlmodel import Session, func, select
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hl7.client import MllpClient
from hl7.server import MllpServer
from sidecar import audit
from sidecar.api import audit as audit_routes
from sidecar.api import (
    auth,
    health,
    hl7_messages,
    images,
    orders,
    orthanc_events,
    studies,
    users,
    viewer,
)
from sidecar.api import critical_findings as critical_finding_routes
from sidecar.api import reports as report_routes
from sidecar.critical_findings import FindingPolicy, flagged_findings
from sidecar.database import make_engine, migrate
from sidecar.dicomweb_proxy import DicomWebProxy
from sidecar.errors import document_error_format, error_body, install_error_handlers
from sidecar.finding_escalation import FindingEscalation
from sidecar.finding_notifications import FindingNotifier
from sidecar.hl7_intake import OrderIntake
from sidecar.models.common import utcnow
from sidecar.models.users import Role, User
from sidecar.order_events import OrderEvents
from sidecar.orthanc_client import OrthancClient
from sidecar.orthanc_sync import OrthancSync
from sidecar.result_outbox import ResultOutbox
from sidecar.results import ResultRouting
from sidecar.security import hash_password
from sidecar.settings import Settings
from sidecar.viewer_access import ViewerAccess
from sidecar.viewer_front import ViewerBundle, ViewerNotInstalled, default_base_url
from sidecar.worklist import WorklistDirectory
from sidecar.worklist_publisher import WorklistPublisher, zone_of

log = logging.getLogger("sidecar")


def create_app(
    settings: Settings | None = None,
    *,
    orthanc: OrthancClient | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """`orthanc` may be injected (tests pass a client over a mock transport); `clock` is what
    critical findings read the time from (tests advance a fake one)."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    migrate(engine)
    bootstrap_admin(engine, settings)
    orthanc = orthanc or OrthancClient(
        settings.orthanc_url,
        username=settings.orthanc_username,
        password=settings.orthanc_password,
        timeout=settings.orthanc_timeout,
    )
    order_events = OrderEvents()
    announce_order = order_events.announce
    zone = zone_of(settings.timezone)
    publisher: WorklistPublisher | None = None
    if settings.worklist_enabled:
        assert settings.worklist_dir is not None
        # Not fsynced: the database is the source of truth and every start rebuilds the
        # directory from it (publisher.reconcile), so a crash cannot leave it wrong for long,
        # while an fsync per order contends with the database's own commits (measured: the
        # worklist writer took half the sidecar's time under HL7 load). Renames stay atomic.
        # Written in batches by a child process, off the GIL the HL7 intake needs.
        publisher = WorklistPublisher(
            WorklistDirectory(settings.worklist_dir, zone, durable=False),
            settings.database_url,
            writer_process=True,
        )
        order_events.listeners.append(publisher.publish_changes)
    # The HL7 intake's own pool, without a ping before each message (OrderIntake.handle).
    intake_engine = make_engine(settings.database_url, pre_ping=False)
    intake = OrderIntake(intake_engine, zone=zone, announce=order_events.announce_id)
    result_routing = ResultRouting(
        enabled=bool(settings.his_mllp_host),
        sending_application=settings.hl7_application,
        sending_facility=settings.hl7_facility,
        receiving_application=settings.his_application,
        receiving_facility=settings.his_facility,
        send_preliminary=settings.results_send_preliminary,
        zone=zone,
    )
    outbox: ResultOutbox | None = None
    if result_routing.enabled:
        outbox = ResultOutbox(
            engine,
            lambda: MllpClient(
                settings.his_mllp_host, settings.his_mllp_port, timeout=settings.his_mllp_timeout
            ),
            max_delay=settings.result_retry_max_delay,
            on_order_changed=announce_order,
        )
    sync = OrthancSync(
        engine,
        orthanc,
        interval=settings.reconcile_interval,
        on_order_changed=announce_order,
        result_routing=result_routing,
        on_result_queued=outbox.wake if outbox is not None else _nothing,
    )

    # Critical findings: notified through a webhook outbox, escalated by deadline.
    finding_policy = FindingPolicy.from_settings(settings)
    result_routing.finding_sources.append(flagged_findings)
    notifier: FindingNotifier | None = None
    if finding_policy.notify:
        notifier = FindingNotifier(
            engine,
            settings.notification_service_url,
            token=settings.notification_service_token,
            timeout=settings.notification_timeout,
            max_delay=settings.notification_retry_max_delay,
            clock=clock,
        )
    escalation = FindingEscalation(
        engine, finding_policy, clock=clock, on_queued=notifier.wake if notifier else _nothing
    )
    viewer_front = make_viewer_front(settings, engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if publisher is not None:
            # Before serving: a change committed but not yet written (a crash) is repaired.
            offered = await asyncio.to_thread(publisher.reconcile)
            log.info("worklist reconciled: %d scheduled procedure steps offered", offered)
        mllp: MllpServer | None = None
        if settings.mllp_enabled:
            mllp = MllpServer(intake, host=settings.mllp_host, port=settings.mllp_port)
            await mllp.start()
            app.state.mllp = mllp
            log.info("HL7 MLLP listener on %s:%d", settings.mllp_host, mllp.port)
        order_events.start()
        if settings.reconcile_enabled:
            sync.start()
        if outbox is not None:
            outbox.start()  # results left pending by the last run go first
        if notifier is not None:
            notifier.start()  # notifications left pending by the last run too
        escalation.start()
        try:
            yield
        finally:
            if mllp is not None:
                await mllp.stop()
            if outbox is not None:
                await asyncio.to_thread(outbox.stop)
            await asyncio.to_thread(escalation.stop)
            if notifier is not None:
                await asyncio.to_thread(notifier.stop)
            sync.stop()
            await asyncio.to_thread(order_events.stop)
            if publisher is not None:
                await asyncio.to_thread(publisher.close)
            orthanc.close()
            await viewer_front.proxy.aclose()
            intake_engine.dispose()
            engine.dispose()

    app = FastAPI(
        title="Radiology integration sidecar",
        summary="Studies, orders, reports and audit beside Orthanc",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.orthanc = orthanc
    app.state.sync = sync
    app.state.order_events = order_events
    app.state.intake = intake
    app.state.worklist = publisher
    app.state.result_routing = result_routing
    app.state.result_outbox = outbox
    app.state.result_outbox_wake = outbox.wake if outbox is not None else lambda: None
    app.state.clock = clock
    app.state.finding_policy = finding_policy
    app.state.finding_notifier = notifier
    app.state.finding_escalation = escalation
    app.state.critical_findings_wake = lambda: _wake(notifier, escalation)
    app.state.viewer = viewer_front
    app.state.viewer_base_url = viewer_base_url(settings, viewer_front)
    install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(RefuseNul)
    app.add_middleware(AccessLog)
    for module in (
        auth,
        users,
        studies,
        images,
        orders,
        report_routes,
        critical_finding_routes,
        hl7_messages,
        orthanc_events,
        audit_routes,
        health,
    ):
        app.include_router(module.router)
    # Last: its catch-all serves the viewer's client-side routes.
    app.include_router(viewer.router)
    return app


def _nothing() -> None:
    pass


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = document_error_format(
            get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
        )
    return app.openapi_schema


def _wake(notifier: FindingNotifier | None, escalation: FindingEscalation) -> None:
    if notifier is not None:
        notifier.wake()
    escalation.wake()


def make_viewer_front(settings: Settings, engine: Engine) -> viewer.ViewerFront:
    bundle: ViewerBundle | None = None
    error: Exception | None = None
    if settings.viewer_enabled:
        try:
            bundle = ViewerBundle.locate(settings.viewer_dist)
        except ViewerNotInstalled as exc:
            error = exc
            log.warning("viewer front: %s; the rest of the service runs without it", exc)
    credentials = (
        base64.b64encode(f"{settings.orthanc_username}:{settings.orthanc_password}".encode())
        if settings.orthanc_username
        else None
    )
    return viewer.ViewerFront(
        access=ViewerAccess(engine, settings.jwt_secret),
        proxy=DicomWebProxy(
            settings.orthanc_url,
            username=settings.orthanc_username,
            password=settings.orthanc_password,
        ),
        bundle=bundle,
        enabled=settings.viewer_enabled,
        unavailable_reason=viewer.unavailable_reason(settings, error),
        secure_cookie=settings.public_viewer_url.startswith("https://"),
        orthanc_authorization=f"Basic {credentials.decode()}" if credentials else None,
    )


def viewer_base_url(settings: Settings, front: viewer.ViewerFront) -> str | None:
    """Where viewerUrl links point: PUBLIC_VIEWER_URL, else this sidecar when it serves the
    viewer, else nowhere (None: no link is better than a link to an error page)."""
    if settings.public_viewer_url:
        return settings.public_viewer_url
    if front.bundle is not None:
        return default_base_url(settings.sidecar_host, settings.sidecar_port)
    return None


def bootstrap_admin(engine: Engine, settings: Settings) -> None:
    """On first start with an empty user table, creates `admin` from ADMIN_PASSWORD if set."""
    if not settings.admin_password:
        return
    with Session(engine) as session:
        if session.exec(select(func.count()).select_from(User)).one() > 0:
            return
        admin = User(
            username="admin", password_hash=hash_password(settings.admin_password), role=Role.ADMIN
        )
        session.add(admin)
        session.flush()
        audit.record(
            session,
            actor="system:bootstrap",
            action="user.created",
            entity_type="user",
            entity_id=admin.id,
            role=Role.ADMIN,
        )
        session.commit()
        log.info("created the initial administrator account 'admin'")


class AccessLog:
    """Access log without patient data: the route template, never the path or query string
    (they carry accession numbers and patient ids).

    Plain ASGI rather than `app.middleware("http")`: that wrapper relays every body chunk
    through an in-memory stream, a cost each proxied DICOMweb answer would pay. The time
    logged runs to the end of the body."""

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
            log.info(
                "%s %s -> %d in %.1f ms",
                scope["method"],
                getattr(scope.get("route"), "path", "<unmatched>"),
                status,
                (time.perf_counter() - started) * 1000,
            )


class RefuseNul:
    """Answers 400 to a request whose path or query string holds a NUL character (%00), before
    any route sees it: no record can hold one (PostgreSQL refuses it in text, so a lookup with
    it would fail rather than find nothing). Request bodies are checked by sidecar.models.common.
    ApiInput."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            refusal = JSONResponse(
                error_body("bad_request", "the path or query string holds a NUL character"), 400
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
