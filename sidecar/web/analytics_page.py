"""/app/analytics: turnaround (images complete to signed, median and p90, by priority, modality
and day), workload per radiologist, what waits and is overdue now, and the time to acknowledge
critical findings; for today, the last 7 or the last 30 days.

Every figure comes from the functions the API answers with (sidecar.reading.analytics behind
/api/analytics/*, sidecar.findings.metrics behind /api/critical-findings/metrics, the reading
worklist's count behind /api/reading-worklist), for the same roles: the page shows the API's
numbers for the window it names. Charts are SVG drawn here (sidecar.web.charts), each with the
same numbers in a table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import User
from sidecar.core.dependencies import ClockDep, SessionDep, provide
from sidecar.core.pagination import Pagination
from sidecar.core.settings import Settings
from sidecar.findings.metrics import finding_metrics
from sidecar.findings.policy import FindingPolicyDep
from sidecar.reading.analytics import GroupBy, Turnaround, TurnaroundGroup, turnaround, workload
from sidecar.reading.policy import ReadingPolicy, ReadingPolicyDep
from sidecar.reading.queue import WorklistFilter, worklist
from sidecar.web.charts import bar_chart
from sidecar.web.session import page_roles
from sidecar.web.templating import duration, page_link, render
from sidecar.worklist.publisher import zone_of

router = APIRouter(include_in_schema=False)

Analyst = Annotated[User, Depends(page_roles(*page_link("analytics").roles))]


class Period(StrEnum):
    TODAY = "today"
    WEEK = "7d"
    MONTH = "30d"


PERIOD_LABELS = {Period.TODAY: "Today", Period.WEEK: "Last 7 days", Period.MONTH: "Last 30 days"}


def window(period: Period, now: datetime, settings: Settings) -> tuple[datetime, datetime]:
    """[start, now): today from midnight in the department's time zone, else N days back."""
    if period is Period.TODAY:
        local = now.astimezone(zone_of(settings.timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight.astimezone(now.tzinfo), now
    days = 7 if period is Period.WEEK else 30
    return now - timedelta(days=days), now


@router.get("/app/analytics", response_class=HTMLResponse)
def analytics(
    request: Request,
    user: Analyst,
    session: SessionDep,
    reading_policy: ReadingPolicyDep,
    finding_policy: FindingPolicyDep,
    clock: ClockDep,
    period: Annotated[Period, Query()] = Period.WEEK,
) -> HTMLResponse:
    now = clock()
    start, end = window(period, now, provide(Settings)(request))
    by: dict[str, Turnaround] = {
        kind: turnaround(session, reading_policy, start=start, end=end, group_by=kind, now=now)
        for kind in (GroupBy.PRIORITY, GroupBy.MODALITY, GroupBy.DAY)
    }
    readers = workload(session, reading_policy, start=start, end=end, now=now)
    findings = finding_metrics(session, finding_policy, now=now, since=start)
    context: dict[str, Any] = {
        "period": period,
        "periods": PERIOD_LABELS,
        "start": start,
        "end": end,
        "now": now,
        "waiting": _waiting(session, reading_policy, user, now),
        "by_priority": by[GroupBy.PRIORITY].groups,
        "by_modality": by[GroupBy.MODALITY].groups,
        "by_day": by[GroupBy.DAY].groups,
        "workload": readers,
        "findings": findings.severities,
        "day_chart": bar_chart(
            "Median minutes from images complete to signed, per day",
            [_median_bar(group) for group in by[GroupBy.DAY].groups if _signed(group)],
        ),
        "priority_chart": bar_chart(
            "Median minutes from images complete to signed, per priority",
            [_median_bar(group) for group in by[GroupBy.PRIORITY].groups if _signed(group)],
        ),
        "workload_chart": bar_chart(
            "Studies read per radiologist",
            [(w.name, float(w.read), str(w.read)) for w in readers],
        ),
        "open_chart": bar_chart(
            "Studies each radiologist holds now",
            [(w.name, float(w.open), f"{w.open} ({w.overdue} overdue)") for w in readers],
        ),
    }
    return render(request, "analytics.html", context)


def _signed(group: TurnaroundGroup) -> bool:
    return group.images_to_final.p50 is not None


def _median_bar(group: TurnaroundGroup) -> tuple[str, float, str]:
    minutes = group.images_to_final.p50 or 0.0
    return group.group, minutes, duration(minutes * 60)


def _waiting(session: Session, policy: ReadingPolicy, user: User, now: datetime) -> dict[str, int]:
    """What GET /api/reading-worklist counts (its `total`), whole and overdue only, within the
    user's care scope as the worklist applies it."""
    scope = CareScope(user, now).studies()
    counts = {}
    for name, wanted in (("all", WorklistFilter()), ("overdue", WorklistFilter(overdue=True))):
        found = worklist(session, policy, wanted, scope, Pagination(limit=1), now=now)
        counts[name] = int(found["total"])
    return counts
