"""Time to acknowledge critical findings, per severity: the measurement NPSG.02.03.01 asks for.

Computed in Python over the findings (one query, portable to SQLite and PostgreSQL; fine for the
thousands of findings a department raises in a year, and `since` narrows it);
percentiles are nearest-rank, as in bench/figures.py.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from sidecar.findings.models import (
    UNACKNOWLEDGED,
    CriticalFinding,
    FindingMetrics,
    Severity,
    SeverityMetrics,
)
from sidecar.findings.policy import FindingPolicy


def finding_metrics(
    session: Session, policy: FindingPolicy, *, now: datetime, since: datetime | None = None
) -> FindingMetrics:
    query = select(CriticalFinding)
    if since is not None:
        query = query.where(col(CriticalFinding.created_at) >= since)
    rows = session.exec(query).all()
    severities = []
    for severity in Severity:
        mine = [f for f in rows if f.severity == severity]
        acknowledged = [f for f in mine if f.acknowledged_at is not None]
        minutes = [
            (f.acknowledged_at - f.created_at).total_seconds() / 60
            for f in acknowledged
            if f.acknowledged_at is not None
        ]
        waiting = [f for f in mine if f.status in UNACKNOWLEDGED]
        deadline = policy.deadline(severity)
        severities.append(
            SeverityMetrics(
                severity=severity,
                deadline_minutes=int(deadline.total_seconds() // 60) if deadline else None,
                count=len(mine),
                acknowledged=len(acknowledged),
                pending=len(waiting),
                overdue=sum(1 for f in waiting if f.acknowledge_by and f.acknowledge_by <= now),
                acknowledged_late=sum(
                    1
                    for f in acknowledged
                    if f.acknowledge_by
                    and f.acknowledged_at
                    and f.acknowledged_at > f.acknowledge_by
                ),
                median_minutes_to_acknowledge=_percentile(minutes, 0.5),
                p90_minutes_to_acknowledge=_percentile(minutes, 0.9),
            )
        )
    return FindingMetrics(computed_at=now, since=since, severities=severities)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
    return round(value, 2)
