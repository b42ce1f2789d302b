"""Turnaround and workload analytics (issue 14, item 5): administrators and radiologists."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from sidecar.accounts.dependencies import require_roles
from sidecar.accounts.models import Role, User
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import InvalidRequest
from sidecar.core.models import SupportedTime
from sidecar.reading.analytics import (
    GroupBy,
    RadiologistWorkload,
    Turnaround,
    as_csv,
    turnaround,
    workload,
)
from sidecar.reading.policy import ReadingPolicyDep

router = APIRouter(prefix="/api/analytics", tags=["analytics"])

Analyst = Annotated[User, Depends(require_roles(Role.ADMIN, Role.RADIOLOGIST))]
DEFAULT_WINDOW = timedelta(days=30)
From = Annotated[SupportedTime | None, Query(alias="from")]
To = Annotated[SupportedTime | None, Query(alias="to")]


@router.get(
    "/turnaround",
    response_model=Turnaround,
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def turnaround_figures(
    session: SessionDep,
    _: Analyst,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    start: From = None,
    end: To = None,
    group_by: Annotated[GroupBy, Query(alias="groupBy")] = GroupBy.PRIORITY,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Turnaround | Response:
    """Per group: the count, p50 and p90 minutes of order to images, images to preliminary,
    images to final and order to final, and the share within target, for studies whose images
    were complete in [from, to) (default: the last 30 days)."""
    now = clock()
    start, end = _window(start, end, now)
    figures = turnaround(session, policy, start=start, end=end, group_by=group_by, now=now)
    if format == "csv":
        return Response(as_csv(figures), media_type="text/csv; charset=utf-8")
    return figures


@router.get("/workload", response_model=list[RadiologistWorkload])
def workload_figures(
    session: SessionDep,
    _: Analyst,
    policy: ReadingPolicyDep,
    clock: ClockDep,
    start: From = None,
    end: To = None,
) -> list[RadiologistWorkload]:
    """Per radiologist: studies read (first signed) in [from, to), open and overdue now."""
    now = clock()
    start, end = _window(start, end, now)
    return workload(session, policy, start=start, end=end, now=now)


def _window(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    end = end or now
    start = start or end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidRequest("from must be before to")
    return start, end
