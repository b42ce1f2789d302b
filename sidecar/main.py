"""The application factory: settings, database, Orthanc client and sync worker, wired once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from sqlalchemy import Engine
from sqlmodel import Session, func, select

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
)
from sidecar.database import make_engine, migrate
from sidecar.errors import install_error_handlers
from sidecar.hl7_intake import OrderIntake
from sidecar.models.users import Role, User
from sidecar.order_events import OrderEvents
from sidecar.orthanc_client import OrthancClient
from sidecar.orthanc_sync import OrthancSync
from sidecar.security import hash_password
from sidecar.settings import Settings
from sidecar.worklist import WorklistDirectory
from sidecar.worklist_publisher import WorklistPublisher, zone_of

log = logging.getLogger("sidecar")


def create_app(
    settings: Settings | None = None, *, orthanc: OrthancClient | None = None
) -> FastAPI:
    """`orthanc` may be injected (tests pass a client over a mock transport)."""
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
    sync = OrthancSync(
        engine, orthanc, interval=settings.reconcile_interval, on_order_changed=announce_order
    )
    zone = zone_of(settings.timezone)
    publisher: WorklistPublisher | None = None
    if settings.worklist_enabled:
        assert settings.worklist_dir is not None
        # Not fsynced: the database is the source of truth and every start rebuilds the
        # directory from it (publisher.reconcile), so a crash cannot leave it wrong for long,
        # while an fsync per order contends with the database's own commits (measured: the
        # worklist writer took half the sidecar's time under HL7 load). Renames stay atomic.
        publisher = WorklistPublisher(WorklistDirectory(settings.worklist_dir, zone, durable=False))
        order_events.listeners.append(publisher)
    intake = OrderIntake(engine, zone=zone, announce=announce_order)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if publisher is not None:
            # Before serving: a change committed but not yet written (a crash) is repaired.
            offered = await asyncio.to_thread(publisher.reconcile, engine)
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
        try:
            yield
        finally:
            if mllp is not None:
                await mllp.stop()
            sync.stop()
            await asyncio.to_thread(order_events.stop)
            orthanc.close()
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
    install_error_handlers(app)
    app.middleware("http")(_log_request)
    for module in (
        auth,
        users,
        studies,
        images,
        orders,
        hl7_messages,
        orthanc_events,
        audit_routes,
        health,
    ):
        app.include_router(module.router)
    return app


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


async def _log_request(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Access log without patient data: the route template, never the path or query string
    (they carry accession numbers and patient ids)."""
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "<unmatched>")
    log.info(
        "%s %s -> %d in %.1f ms",
        request.method,
        template,
        response.status_code,
        (time.perf_counter() - started) * 1000,
    )
    return response
