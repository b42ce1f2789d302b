"""Health for monitoring: database and Orthanc reachability, and how far synchronisation lags.

Unauthenticated on purpose (load balancers and monitors call it); it reveals counts only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel import Session, col, func, select

from sidecar.models.critical_findings import DeliveryStatus, FindingNotification
from sidecar.models.orders import Hl7Direction, Hl7Message
from sidecar.models.studies import Study
from sidecar.orthanc_client import OrthancError
from sidecar.results import FAILED, PENDING

router = APIRouter(tags=["health"])


def _database(request: Request) -> dict[str, Any]:
    try:
        with Session(request.app.state.engine) as session:
            session.execute(text("SELECT 1"))
        return {"status": "up"}
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}


def _orthanc(request: Request) -> dict[str, Any]:
    try:
        system = request.app.state.orthanc.system()
        return {"status": "up", "version": system.get("Version"), "aet": system.get("DicomAet")}
    except OrthancError as exc:
        return {"status": "down", "error": str(exc)}


def _sync(request: Request) -> dict[str, Any]:
    status = request.app.state.sync.status
    return {
        "changesCursor": status.cursor,
        "orthancLastChange": status.orthanc_last_seq,
        "pendingStudies": status.pending,
        "studiesRegistered": status.registered,
        "lastError": status.last_error,
        "lastPollAt": status.last_poll_at.isoformat() if status.last_poll_at else None,
        "lastNoticeToVisibleMs": (
            round(status.notice_to_visible[0] * 1000) if status.notice_to_visible else None
        ),
    }


def _answer(checks: dict[str, dict[str, Any]], **extra: Any) -> JSONResponse:
    healthy = all(check["status"] == "up" for check in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "checks": checks, **extra}
    return JSONResponse(body, status_code=200 if healthy else 503)


def _studies(request: Request) -> dict[str, Any]:
    """Studies whose Study Instance UID Orthanc holds under several patient ids (kept from the
    viewer until someone resolves them): a monitor should alert on any."""
    try:
        with Session(request.app.state.engine) as session:
            conflicts = session.exec(
                select(func.count())
                .select_from(Study)
                .where(col(Study.conflicting_patient_ids).is_not(None))
            ).one()
    except Exception as exc:
        return {"error": type(exc).__name__}
    return {"patientConflicts": conflicts}


def _hl7(request: Request) -> dict[str, Any]:
    mllp = getattr(request.app.state, "mllp", None)
    if mllp is None:
        return {"listening": False}
    return {"listening": True, "port": mllp.port, "connections": mllp.connection_count}


def _worklist(request: Request) -> dict[str, Any]:
    publisher = request.app.state.worklist
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


def _results(request: Request) -> dict[str, Any]:
    """Results waiting for the HIS: pending (queued or retrying) and failed (refused by it)."""
    settings = request.app.state.settings
    backlog = _outbox_backlog(
        request,
        request.app.state.result_outbox,
        Hl7Message.status,
        {PENDING: "pending", FAILED: "failed"},
        Hl7Message.direction == Hl7Direction.OUTBOUND,
    )
    if backlog["enabled"]:
        backlog["his"] = f"{settings.his_mllp_host}:{settings.his_mllp_port}"
    return backlog


def _notifications(request: Request) -> dict[str, Any]:
    """Critical finding webhooks waiting for the notification service, and refused by it."""
    return _outbox_backlog(
        request,
        request.app.state.finding_notifier,
        FindingNotification.status,
        {DeliveryStatus.PENDING: "pending", DeliveryStatus.REFUSED: "refused"},
    )


def _outbox_backlog(
    request: Request, worker: Any, status: Any, labels: dict[str, str], *conditions: Any
) -> dict[str, Any]:
    """How many of an outbox's messages are in each labelled status, and the worker's last
    delivery error; `worker` None: that outbox is not configured."""
    if worker is None:
        return {"enabled": False}
    try:
        with Session(request.app.state.engine) as session:
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
        "lastError": worker.last_error,
    }


@router.get("/health")
def health(request: Request) -> JSONResponse:
    return _answer(
        {"database": _database(request), "orthanc": _orthanc(request)},
        sync=_sync(request),
        studies=_studies(request),
        hl7=_hl7(request),
        worklist=_worklist(request),
        results=_results(request),
        notifications=_notifications(request),
    )


@router.get("/health/db")
def health_database(request: Request) -> JSONResponse:
    return _answer({"database": _database(request)})


@router.get("/health/orthanc")
def health_orthanc(request: Request) -> JSONResponse:
    return _answer({"orthanc": _orthanc(request)})
