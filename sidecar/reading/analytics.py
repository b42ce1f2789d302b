"""Turnaround and workload figures (issue 14, item 5), computed in Python over one query.

The studies counted are those whose images were complete (the reading ready time) within
[from, to). Per study: order -> images (the order's creation to images complete), images ->
preliminary (to the report's first draft), images -> final (to its first signature) and
order -> final. Within target: signed within its priority's target; the share is taken over the
signed studies and the unsigned ones already past their due time (a miss in the making is a
miss). Percentiles are nearest-rank, as in sidecar.findings.metrics.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_
from sqlalchemy import select as sql_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core.models import ApiModel, split_multi
from sidecar.orders.models import ImagingOrder
from sidecar.reading.models import StudyReading
from sidecar.reading.policy import READY_TO_READ, ReadingPolicy, as_priority, ready_time
from sidecar.reports.models import RadiologyReport, ReportRevision
from sidecar.studies.models import Study, StudyStatus


class GroupBy(StrEnum):
    MODALITY = "modality"
    PRIORITY = "priority"
    RADIOLOGIST = "radiologist"
    DAY = "day"


INTERVALS = ("order_to_images", "images_to_preliminary", "images_to_final", "order_to_final")


class Minutes(ApiModel):
    count: int
    p50: float | None
    p90: float | None


class TurnaroundGroup(ApiModel):
    group: str
    count: int
    order_to_images: Minutes
    images_to_preliminary: Minutes
    images_to_final: Minutes
    order_to_final: Minutes
    within_target: int
    target_counted: int
    within_target_share: float | None


class Turnaround(ApiModel):
    computed_at: datetime
    start: datetime
    end: datetime
    group_by: GroupBy
    groups: list[TurnaroundGroup]


class RadiologistWorkload(ApiModel):
    radiologist_id: int
    name: str
    read: int  # studies they signed first within [from, to)
    open: int  # studies they hold, not yet final
    overdue: int  # of those, past their due time now


@dataclass(frozen=True)
class _Timeline:
    study: Study
    order_at: datetime | None
    order_modality: str | None
    images_at: datetime | None
    preliminary_at: datetime | None
    final_at: datetime | None
    signer: str | None
    holder: str | None


def turnaround(
    session: Session,
    policy: ReadingPolicy,
    *,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    now: datetime,
) -> Turnaround:
    groups: dict[str, list[_Timeline]] = defaultdict(list)
    for timeline in _timelines(session, start, end):
        groups[_label(timeline, group_by)].append(timeline)
    return Turnaround(
        computed_at=now,
        start=start,
        end=end,
        group_by=group_by,
        groups=[_figures(label, rows, policy, now) for label, rows in sorted(groups.items())],
    )


def as_csv(figures: Turnaround) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["group", "count"]
    for name in INTERVALS:
        header += [f"{name}_count", f"{name}_p50_minutes", f"{name}_p90_minutes"]
    writer.writerow([*header, "within_target", "target_counted", "within_target_share"])
    for group in figures.groups:
        row: list[object] = [group.group, group.count]
        for name in INTERVALS:
            minutes: Minutes = getattr(group, name)
            row += [minutes.count, _cell(minutes.p50), _cell(minutes.p90)]
        writer.writerow(
            [*row, group.within_target, group.target_counted, _cell(group.within_target_share)]
        )
    return out.getvalue()


def workload(
    session: Session, policy: ReadingPolicy, *, start: datetime, end: datetime, now: datetime
) -> list[RadiologistWorkload]:
    radiologists = session.exec(
        select(User).where(User.role == Role.RADIOLOGIST).order_by(col(User.id))
    ).all()
    first = aliased(ReportRevision)
    signed = session.exec(
        select(first.signed_by_id).where(
            col(first.revision) == 1, col(first.signed_at) >= start, col(first.signed_at) < end
        )
    ).all()
    held = session.exec(
        select(
            StudyReading.assigned_to_id, Study.priority, ready_time(), StudyReading.review_due_at
        )
        .join(Study, col(Study.id) == col(StudyReading.study_id))
        .where(col(Study.status).in_(READY_TO_READ), col(StudyReading.assigned_to_id).is_not(None))
    ).all()
    answer = []
    for user in radiologists:
        assert user.id is not None
        mine = [(p, ready, review) for holder_id, p, ready, review in held if holder_id == user.id]
        due = [policy.due(as_priority(p), ready, review) for p, ready, review in mine]
        answer.append(
            RadiologistWorkload(
                radiologist_id=user.id,
                name=user.username,
                read=sum(1 for signer in signed if signer == user.id),
                open=len(mine),
                overdue=sum(1 for at in due if at is not None and at <= now),
            )
        )
    return answer


def _timelines(session: Session, start: datetime, end: datetime) -> Iterable[_Timeline]:
    report = aliased(RadiologyReport)
    first = aliased(ReportRevision)
    signer = aliased(User)
    holder = aliased(User)
    images_at = ready_time()
    rows = session.execute(
        sql_select(
            Study,
            col(ImagingOrder.created_at),
            col(ImagingOrder.modality),
            images_at,
            col(report.created_at),
            col(first.signed_at),
            col(signer.username),
            col(holder.username),
        )
        .outerjoin(StudyReading, col(StudyReading.study_id) == col(Study.id))
        .outerjoin(ImagingOrder, col(ImagingOrder.id) == col(Study.order_id))
        .outerjoin(
            report, and_(col(report.study_id) == col(Study.id), col(report.deleted_at).is_(None))
        )
        .outerjoin(first, and_(col(first.report_id) == col(report.id), col(first.revision) == 1))
        .outerjoin(signer, col(signer.id) == col(first.signed_by_id))
        .outerjoin(holder, col(holder.id) == col(StudyReading.assigned_to_id))
        .where(images_at >= start, images_at < end, col(Study.status) != StudyStatus.CANCELLED)
    ).all()
    for study, order_at, modality, ready, preliminary, final, signed_by, held_by in rows:
        yield _Timeline(
            study=study,
            order_at=order_at,
            order_modality=modality.value if modality is not None else None,
            images_at=ready,
            preliminary_at=preliminary,
            final_at=final,
            signer=signed_by,
            holder=held_by,
        )


def _label(timeline: _Timeline, group_by: GroupBy) -> str:
    if group_by == GroupBy.PRIORITY:
        return as_priority(timeline.study.priority).value
    if group_by == GroupBy.RADIOLOGIST:
        return timeline.signer or timeline.holder or "unassigned"
    if group_by == GroupBy.DAY:
        return timeline.images_at.date().isoformat() if timeline.images_at else "unknown"
    modalities = split_multi(timeline.study.modalities)
    return timeline.order_modality or (modalities[0] if modalities else "unknown")


def _figures(
    label: str, rows: list[_Timeline], policy: ReadingPolicy, now: datetime
) -> TurnaroundGroup:
    def minutes(
        since: Callable[[_Timeline], datetime | None], until: Callable[[_Timeline], datetime | None]
    ) -> Minutes:
        values = []
        for row in rows:
            a, b = since(row), until(row)
            if a is not None and b is not None:
                values.append((b - a).total_seconds() / 60)
        return Minutes(
            count=len(values), p50=_percentile(values, 0.5), p90=_percentile(values, 0.9)
        )

    within = counted = 0
    for row in rows:
        due = policy.due(as_priority(row.study.priority), row.images_at)
        if due is None:
            continue
        if row.final_at is not None:
            counted += 1
            within += row.final_at <= due
        elif due <= now:
            counted += 1
    return TurnaroundGroup(
        group=label,
        count=len(rows),
        order_to_images=minutes(lambda r: r.order_at, lambda r: r.images_at),
        images_to_preliminary=minutes(lambda r: r.images_at, lambda r: r.preliminary_at),
        images_to_final=minutes(lambda r: r.images_at, lambda r: r.final_at),
        order_to_final=minutes(lambda r: r.order_at, lambda r: r.final_at),
        within_target=within,
        target_counted=counted,
        within_target_share=round(within / counted, 4) if counted else None,
    )


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
    return round(value, 2)


def _cell(value: float | None) -> str:
    return "" if value is None else str(value)
