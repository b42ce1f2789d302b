"""Status workflows, written once as data and enforced in one place.

Study (seed 001): SCHEDULED -> ARRIVED -> IN_PROGRESS -> COMPLETED -> PRELIMINARY -> FINAL, or
CANCELLED. Order (seed 001): PENDING -> SCHEDULED -> IN_PROGRESS -> COMPLETED, or CANCELLED /
ON_HOLD. Report (seed 001): PRELIMINARY -> FINAL -> AMENDED / CORRECTED, and a signed report may
be amended or corrected again. Images can arrive for a study nobody announced, or before anyone
marked the patient arrived, so the acquisition steps may be skipped forward; a discarded draft
report sends the study back to COMPLETED, but a signed one never goes back. Critical finding:
PENDING -> NOTIFIED -> ESCALATED (again at each step of the chain) -> ACKNOWLEDGED -> RESOLVED;
it may be acknowledged from any of the three unacknowledged states, and nothing goes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from sidecar.models.critical_findings import FindingStatus
from sidecar.models.orders import OrderStatus
from sidecar.models.reports import ReportStatus
from sidecar.models.studies import StudyStatus
from sidecar.refusals import ConflictingState

StatusT = TypeVar("StatusT", bound=StrEnum)


class InvalidTransition(ConflictingState):
    def __init__(
        self, workflow: str, current: StrEnum, target: StrEnum, allowed: Iterable[StrEnum]
    ):
        names = ", ".join(sorted(s.value for s in allowed)) or "none (final state)"
        super().__init__(
            f"{workflow} status cannot change from {current.value} to {target.value}; "
            f"allowed from {current.value}: {names}"
        )
        self.current = current
        self.target = target


class Workflow(Generic[StatusT]):
    def __init__(self, name: str, transitions: Mapping[StatusT, Iterable[StatusT]]) -> None:
        self.name = name
        self._transitions = {state: frozenset(targets) for state, targets in transitions.items()}

    def allowed_from(self, current: StatusT) -> frozenset[StatusT]:
        return self._transitions.get(current, frozenset())

    def can(self, current: StatusT, target: StatusT) -> bool:
        return target in self.allowed_from(current)

    def check(self, current: StatusT, target: StatusT) -> None:
        if not self.can(current, target):
            raise InvalidTransition(self.name, current, target, self.allowed_from(current))


_S = StudyStatus
STUDY_WORKFLOW: Workflow[StudyStatus] = Workflow(
    "study",
    {
        _S.SCHEDULED: {_S.ARRIVED, _S.IN_PROGRESS, _S.COMPLETED, _S.CANCELLED},
        _S.ARRIVED: {_S.IN_PROGRESS, _S.COMPLETED, _S.CANCELLED},
        _S.IN_PROGRESS: {_S.COMPLETED, _S.CANCELLED},
        _S.COMPLETED: {_S.PRELIMINARY, _S.FINAL, _S.CANCELLED},
        # A discarded preliminary report leaves the study waiting to be read again.
        _S.PRELIMINARY: {_S.FINAL, _S.COMPLETED},
        _S.FINAL: set(),
        _S.CANCELLED: set(),
    },
)

_O = OrderStatus
ORDER_WORKFLOW: Workflow[OrderStatus] = Workflow(
    "order",
    {
        _O.PENDING: {_O.SCHEDULED, _O.IN_PROGRESS, _O.CANCELLED, _O.ON_HOLD},
        _O.SCHEDULED: {_O.PENDING, _O.IN_PROGRESS, _O.CANCELLED, _O.ON_HOLD},
        _O.IN_PROGRESS: {_O.COMPLETED, _O.CANCELLED, _O.ON_HOLD},
        _O.ON_HOLD: {_O.PENDING, _O.SCHEDULED, _O.IN_PROGRESS, _O.CANCELLED},
        _O.COMPLETED: set(),
        _O.CANCELLED: set(),
    },
)

_RS = ReportStatus
REPORT_WORKFLOW: Workflow[ReportStatus] = Workflow(
    "report",
    {
        _RS.PRELIMINARY: {_RS.FINAL},
        _RS.FINAL: {_RS.AMENDED, _RS.CORRECTED},
        _RS.AMENDED: {_RS.AMENDED, _RS.CORRECTED},
        _RS.CORRECTED: {_RS.AMENDED, _RS.CORRECTED},
    },
)

_F = FindingStatus
FINDING_WORKFLOW: Workflow[FindingStatus] = Workflow(
    "critical finding",
    {
        # Escalation follows the clock, not delivery: an undelivered PENDING finding escalates.
        _F.PENDING: {_F.NOTIFIED, _F.ESCALATED, _F.ACKNOWLEDGED},
        _F.NOTIFIED: {_F.ESCALATED, _F.ACKNOWLEDGED},
        _F.ESCALATED: {_F.ESCALATED, _F.ACKNOWLEDGED},
        _F.ACKNOWLEDGED: {_F.RESOLVED},
        _F.RESOLVED: set(),
    },
)
