"""Health for monitoring: database and Orthanc reachability, and how far synchronisation lags.

Unauthenticated on purpose (load balancers and monitors call it); it reveals counts only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlmodel import Session

from sidecar.orthanc_client import OrthancError

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


def _hl7(request: Request) -> dict[str, Any]:
    mllp = getattr(request.app.state, "mllp", None)
    if mllp is None:
        return {"listening": False}
    return {"listening": True, "port": mllp.port, "connections": mllp.connection_count}


def _worklist(request: Request) -> dict[str, Any]:
    publisher = request.app.state.worklist
    if publisher is None:
        return {"enabled": False}
    try:
        return {"enabled": True, "scheduledProcedureSteps": len(publisher.directory.keys())}
    except Exception as exc:
        return {"enabled": True, "error": type(exc).__name__}


@router.get("/health")
def health(request: Request) -> JSONResponse:
    return _answer(
        {"database": _database(request), "orthanc": _orthanc(request)},
        sync=_sync(request),
        hl7=_hl7(request),
        worklist=_worklist(request),
    )


@router.get("/health/db")
def health_database(request: Request) -> JSONResponse:
    return _answer({"database": _database(request)})


@router.get("/health/orthanc")
def health_orthanc(request: Request) -> JSONResponse:
    return _answer({"orthanc": _orthanc(request)})
