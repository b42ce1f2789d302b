"""Health for monitoring: database and Orthanc reachability, and how far synchronisation lags.

Unauthenticated on purpose (load balancers and monitors call it); it reveals counts only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlmodel import Session, col, func, select

from sidecar.core.cluster import Cluster
from sidecar.core.cluster_models import holders, members
from sidecar.core.dependencies import EngineDep, SettingsDep, provide, provide_optional
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.findings.escalation import FindingWorkersDep
from sidecar.findings.models import DeliveryStatus, FindingNotification
from sidecar.findings.notifications import FindingNotifier
from sidecar.ingest.deletion_watch import DeletionWatch, pending_checks
from sidecar.ingest.models import ChangesCursor, PendingStudy
from sidecar.ingest.orthanc_client import OrthancClient, OrthancError
from sidecar.ingest.sync import OrthancSync
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.mpps.scp import MppsListener
from sidecar.operations.alarms import DiskWatch, backlog_ages, oldest_waiting
from sidecar.orders.listener import OrderListener
from sidecar.patients import image_updates
from sidecar.patients.image_updates import ImageUpdater, ImageUpdaterDep
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.results.outbox import ResultOutbox, ResultOutboxDep
from sidecar.studies import deidentify_sweep, removal_worker
from sidecar.studies.deidentify_sweep import DeidentificationSweep, DeidentificationSweepDep
from sidecar.studies.models import Study
from sidecar.studies.removal_worker import ImageRemover, ImageRemoverDep
from sidecar.worklist.publisher import WorklistPublisher

router = APIRouter(tags=["health"])


def _database(engine: Engine) -> dict[str, Any]:
    try:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
        return {"status": "up"}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


def _orthanc(orthanc: OrthancClient) -> dict[str, Any]:
    try:
        system = orthanc.system()
        return {"status": "up", "version": system.get("Version"), "aet": system.get("DicomAet")}
    except OrthancError as exc:
        return {"status": "down", "error": str(exc)}


def _sync(sync: OrthancSync, engine: Engine) -> dict[str, Any]:
    """The change log's cursor and the registration queue as the database has them (the whole
    cluster's); the rest is this node's own view (`runsHere`: whether it reads the log now)."""
    status = sync.status
    try:
        with Session(engine) as session:
            cursor = session.get(ChangesCursor, 1)
            pending = session.exec(select(func.count()).select_from(PendingStudy)).one()
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {
        "changesCursor": cursor.last_seq if cursor else 0,
        "orthancLastChange": status.orthanc_last_seq,
        "pendingStudies": pending,
        "studiesRegistered": status.registered,
        "lastError": status.last_error,
        "lastPollAt": cursor.updated_at.isoformat() if cursor else None,
        "lastNoticeToVisibleMs": (
            round(status.notice_to_visible[0] * 1000) if status.notice_to_visible else None
        ),
        "runsHere": sync.runs_here,
    }


def _cluster(cluster: Cluster) -> dict[str, Any]:
    """The nodes seen in the last minute, which node runs each background job (null: none
    now, e.g. its holder just died and another is about to take it), and whether this node
    hears the others (PostgreSQL)."""
    try:
        with Session(cluster.engine) as session:
            nodes, leases = members(session), holders(session)
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {
        "shared": cluster.shared,
        "listening": cluster.listening if cluster.shared else None,
        "leaseSeconds": cluster.lease_seconds,
        "heartbeatError": cluster.last_error,
        "nodes": nodes,
        "leases": leases,
    }


def _answer(
    checks: dict[str, dict[str, Any]],
    reasons: list[str] | None = None,
    warnings: list[str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """503 `unavailable` when a check is down, with the reasons; else 200, `degraded` with the
    warnings when there are any, `ok` otherwise."""
    reasons = [
        *(
            f"{name}: {check.get('error', 'down')}"
            for name, check in checks.items()
            if check["status"] != "up" and name != "disk"
        ),
        *(reasons or ()),
    ]
    status = "unavailable" if reasons else "degraded" if warnings else "ok"
    body: dict[str, Any] = {"status": status, "checks": checks}
    if reasons:
        body["reasons"] = reasons
    if warnings:
        body["warnings"] = warnings
    return JSONResponse({**body, **extra}, status_code=503 if reasons else 200)


def _backlogs(engine: Engine, settings: Settings) -> tuple[dict[str, Any], list[str]]:
    try:
        with Session(engine) as session:
            oldest = oldest_waiting(session)
    except Exception as exc:
        return {"error": type(exc).__name__}, []
    return backlog_ages(oldest, utcnow(), settings.backlog_warn_seconds)


def _studies(engine: Engine) -> dict[str, Any]:
    """Studies whose Study Instance UID Orthanc holds under several patient ids (kept from the
    viewer until someone resolves them): a monitor should alert on any. And studies kept as a
    record (a report, a critical finding or an order refers to them) although Orthanc no longer
    holds their images (deleted there): someone should know why."""
    try:
        with Session(engine) as session:
            conflicts = session.exec(
                select(func.count())
                .select_from(Study)
                .where(col(Study.conflicting_patient_ids).is_not(None))
            ).one()
            images_deleted = session.exec(
                select(func.count())
                .select_from(Study)
                .where(col(Study.images_deleted_at).is_not(None), col(Study.removed_at).is_(None))
            ).one()
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {"patientConflicts": conflicts, "imagesDeleted": images_deleted}


def _deletions(engine: Engine, watch: DeletionWatch) -> dict[str, Any]:
    """Following deletions made in Orthanc: studies waiting for a check against Orthanc (and of
    those, failing ones), the last reconciliation, and why it held if it did (alert on it)."""
    status = watch.status
    try:
        with Session(engine) as session:
            pending, failing = pending_checks(session)
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {
        "pendingChecks": pending,
        "failingChecks": failing,
        "studiesFollowed": status.studies_followed,
        "lastReconcileAt": (
            status.last_reconcile_at.isoformat() if status.last_reconcile_at else None
        ),
        "reconcileHeld": status.held,
        "lastError": status.last_error,
    }


def _hl7(listener: OrderListener) -> dict[str, Any]:
    mllp = listener.server
    if mllp is None:
        return {"listening": False}
    return {"listening": True, "port": mllp.port, "connections": mllp.connection_count}


def _mpps(listener: MppsListener, engine: Engine) -> dict[str, Any]:
    """The MPPS SCP, and the performed steps linked to no order (to reconcile: alert on any)."""
    if not listener.running:
        return {"listening": False}
    try:
        with Session(engine) as session:
            unscheduled = session.exec(
                select(func.count())
                .select_from(PerformedProcedureStep)
                .where(col(PerformedProcedureStep.order_id).is_(None))
            ).one()
    except Exception as exc:
        return {"listening": True, "error": type(exc).__name__}
    return {
        "listening": True,
        "aet": listener.ae_title,
        "port": listener.port,
        "unscheduledSteps": unscheduled,
    }


def _worklist(publisher: WorklistPublisher | None) -> dict[str, Any]:
    if publisher is None:
        return {"enabled": False}
    unfit = sorted(publisher.unfit)
    try:
        offered = len(publisher.directory.keys())
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}
    # Scheduled orders the worklist cannot hold (a value DICOM cannot take): an alert, by id.
    return {
        "enabled": True,
        "scheduledProcedureSteps": offered,
        "ordersNotOffered": len(unfit),
        "ordersNotOfferedIds": unfit[:20],
    }


def _results(engine: Engine, outbox: ResultOutbox | None, settings: Settings) -> dict[str, Any]:
    """Results and order status updates waiting for the HIS: pending (queued or retrying) and
    failed (refused by it)."""
    backlog = _outbox_backlog(
        engine,
        outbox,
        Hl7Message.status,
        {Hl7MessageStatus.PENDING: "pending", Hl7MessageStatus.FAILED: "failed"},
        Hl7Message.direction == Hl7Direction.OUTBOUND,
    )
    if backlog["enabled"]:
        backlog["his"] = f"{settings.his_mllp_host}:{settings.his_mllp_port}"
    return backlog


def _notifications(engine: Engine, notifier: FindingNotifier | None) -> dict[str, Any]:
    """Critical finding webhooks waiting for the notification service, and refused by it."""
    return _outbox_backlog(
        engine,
        notifier,
        FindingNotification.status,
        {DeliveryStatus.PENDING: "pending", DeliveryStatus.REFUSED: "refused"},
    )


def _outbox_backlog(
    engine: Engine, worker: Any, status: Any, labels: dict[str, str], *conditions: Any
) -> dict[str, Any]:
    """How many of an outbox's messages are in each labelled status, and the worker's last
    delivery error; `worker` None: that outbox is not configured."""
    if worker is None:
        return {"enabled": False}
    try:
        with Session(engine) as session:
            counts = dict(
                session.exec(
                    select(status, func.count())
                    .where(*conditions, col(status).in_(labels))
                    .group_by(col(status))
                ).all()
            )
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}
    return {
        "enabled": True,
        **{label: counts.get(value, 0) for value, label in labels.items()},
        # The worker's memory: true of the cluster only on the node that runs it now.
        "lastError": worker.last_error if worker.runs_here else None,
    }


def _image_updates(engine: Engine, updater: ImageUpdater | None) -> dict[str, Any]:
    """Studies whose stored images still carry a patient's former identifier or demographics
    (a merge or correction not yet written to Orthanc): pending, and failed (alert on any)."""
    if updater is None:
        return {"enabled": False}
    try:
        with Session(engine) as session:
            waiting = image_updates.backlog(session)
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}
    oldest = waiting.oldest_pending_at
    return {
        "enabled": True,
        "running": updater.runs_here,
        "pending": waiting.pending,
        "failed": waiting.failed,
        "oldestPendingSeconds": (
            round((utcnow() - oldest).total_seconds()) if oldest is not None else None
        ),
        "lastError": updater.last_error if updater.runs_here else None,
    }


def _image_removals(engine: Engine, remover: ImageRemover | None) -> dict[str, Any]:
    """Image removals (IOCM rejections) Orthanc has not performed yet: queued, and retrying
    after Orthanc failed (alert on any), with the latest error."""
    if remover is None:
        return {"enabled": False}
    try:
        with Session(engine) as session:
            waiting = removal_worker.backlog(session)
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}
    oldest = waiting.oldest_requested_at
    return {
        "enabled": True,
        "running": remover.runs_here,
        "queued": waiting.queued,
        "retrying": waiting.retrying,
        "oldestWaitingSeconds": (
            round((utcnow() - oldest).total_seconds()) if oldest is not None else None
        ),
        "lastError": waiting.last_error,
    }


def _deidentified_copies(engine: Engine, sweep: DeidentificationSweep | None) -> dict[str, Any]:
    """De-identified copies being made, and those abandoned midway waiting for the sweep to
    delete what Orthanc wrote (alert when that stays above zero)."""
    if sweep is None:
        return {"enabled": False}
    try:
        with Session(engine) as session:
            waiting = deidentify_sweep.backlog(session, now=utcnow())
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}
    return {
        "enabled": True,
        "running": sweep.running,
        "creating": waiting.creating,
        "waitingForCleanup": waiting.abandoned,
        "lastError": sweep.last_error,
    }


OrthancDep = Annotated[OrthancClient, Depends(provide(OrthancClient))]


@router.get("/health")
def health(
    engine: EngineDep,
    settings: SettingsDep,
    orthanc: OrthancDep,
    sync: Annotated[OrthancSync, Depends(provide(OrthancSync))],
    deletions: Annotated[DeletionWatch, Depends(provide(DeletionWatch))],
    listener: Annotated[OrderListener, Depends(provide(OrderListener))],
    mpps: Annotated[MppsListener, Depends(provide(MppsListener))],
    publisher: Annotated[WorklistPublisher | None, Depends(provide_optional(WorklistPublisher))],
    outbox: ResultOutboxDep,
    findings: FindingWorkersDep,
    updater: ImageUpdaterDep,
    remover: ImageRemoverDep,
    sweep: DeidentificationSweepDep,
    cluster: Annotated[Cluster, Depends(provide(Cluster))],
    disks: Annotated[DiskWatch, Depends(provide(DiskWatch))],
) -> JSONResponse:
    disk, full = disks.check()
    backlogs, late = _backlogs(engine, settings)
    return _answer(
        {"database": _database(engine), "orthanc": _orthanc(orthanc), "disk": disk},
        full,
        late,
        node=settings.node_name,
        backlogs=backlogs,
        cluster=_cluster(cluster),
        sync=_sync(sync, engine),
        studies=_studies(engine),
        deletions=_deletions(engine, deletions),
        hl7=_hl7(listener),
        mpps=_mpps(mpps, engine),
        worklist=_worklist(publisher),
        results=_results(engine, outbox, settings),
        notifications=_notifications(engine, findings.notifier),
        imageUpdates=_image_updates(engine, updater),
        imageRemovals=_image_removals(engine, remover),
        deidentifiedCopies=_deidentified_copies(engine, sweep),
    )


@router.get("/health/db")
def health_database(engine: EngineDep) -> JSONResponse:
    return _answer({"database": _database(engine)})


@router.get("/health/orthanc")
def health_orthanc(orthanc: OrthancDep) -> JSONResponse:
    return _answer({"orthanc": _orthanc(orthanc)})
