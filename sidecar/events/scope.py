"""Which events a caller may see: the care scope of the API (sidecar.access.care_scope), asked
of the changed records themselves, so that no second rule exists.

A created or changed record is visible when the API would show it now: a study or an order of
a patient in reach, a report a physician may read (signed, not a draft), a finding in reach or
notified to them, a work item of a study in reach (to an analyzer: a work item it may claim,
SCHEDULED, or one it performs; and no other kind of event). A removed study or order is gone:
its event carries the patient and facility it had, given to the same `CareScope.cares_for`
condition and facility limit. A removed report or finding is visible with its study.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import literal, or_
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.analyses.models import Workitem, WorkitemState
from sidecar.events.models import EventAction, EventKind, LiveEvent
from sidecar.findings.models import CriticalFinding
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport
from sidecar.studies.models import Study

#: How long a "visible" answer is kept for the same record (a burst of changes to one study
#: asks once). A "not visible" answer is never kept: a draft signed a moment later is visible.
SCOPE_CACHE_SECONDS = 5.0


def _in_reach(scope: CareScope, kind: str) -> tuple[Any, list[Any]]:
    if kind == EventKind.WORKITEM:
        if scope.workitem_limited:  # an analyzer: what it may claim, and what it performs
            held = or_(
                col(Workitem.state) == WorkitemState.SCHEDULED,
                col(Workitem.performer_id) == scope.user.id,
            )
            return col(Workitem.id), [held]
        return col(Workitem.id), scope.workitems()
    if kind == EventKind.STUDY:
        return col(Study.id), scope.studies()
    if kind == EventKind.ORDER:
        return col(ImagingOrder.id), scope.orders()
    if kind == EventKind.REPORT:
        return col(RadiologyReport.id), scope.reports()
    return col(CriticalFinding.id), scope.findings()


class ScopeFilter:
    """One caller's filter of events, with a short memory of the records found visible."""

    def __init__(self, scope: CareScope) -> None:
        self.scope = scope
        self._visible: dict[tuple[str, int], float] = {}

    def visible(self, session: Session, events: Iterable[LiveEvent]) -> list[LiveEvent]:
        events = list(events)
        if not self.scope.limited:
            return events
        if self.scope.workitem_limited:  # an analyzer sees its work items' events, nothing else
            events = [event for event in events if event.kind == EventKind.WORKITEM]
        now = time.monotonic()
        self._visible = {key: until for key, until in self._visible.items() if until > now}
        unknown: dict[str, set[int]] = {}
        for event in events:
            key = (event.kind, event.entity_id)
            if event.action != EventAction.REMOVED and key not in self._visible:
                unknown.setdefault(event.kind, set()).add(event.entity_id)
        for kind, ids in unknown.items():
            id_column, conditions = _in_reach(self.scope, kind)
            found = session.exec(select(id_column).where(id_column.in_(ids), *conditions))
            for entity_id in found:
                self._visible[(kind, int(entity_id))] = now + SCOPE_CACHE_SECONDS
        return [
            event
            for event in events
            if (
                self._removed_visible(session, event)
                if event.action == EventAction.REMOVED
                else (event.kind, event.entity_id) in self._visible
            )
        ]

    def _removed_visible(self, session: Session, event: LiveEvent) -> bool:
        if event.kind == EventKind.WORKITEM:
            return False  # work items are not removed; one that were would name nothing
        if event.kind in (EventKind.STUDY, EventKind.ORDER):
            facilities = self.scope.facilities
            if facilities and event.facility_id not in facilities:
                return False
            if not self.scope.care_limited:
                return True
            if event.patient_id is None:
                return False
            cares = self.scope.cares_for(
                literal(event.patient_id), literal(event.issuer_of_patient_id)
            )
            return session.exec(select(literal(1)).where(cares)).first() is not None
        if event.study_id is None:
            return False
        study = select(col(Study.id)).where(col(Study.id) == event.study_id, *self.scope.studies())
        return session.exec(study).first() is not None
