"""Status workflows, written once as data and enforced in one place.

Study (seed 001): SCHEDULED -> ARRIVED -> IN_PROGRESS -> COMPLETED -> PRELIMINARY -> FINAL, or
CANCELLED. Order (seed 001): PENDING -> SCHEDULED -> IN_PROGRESS -> COMPLETED, or CANCELLED /
ON_HOLD. Images can arrive for a study nobody announced, or before anyone marked the patient
arrived, so the acquisition steps may be skipped forward; reading steps may not be skipped back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from sidecar.models.orders import OrderStatus
from sidecar.models.studies import StudyStatus

StatusT = TypeVar("StatusT", bound=StrEnum)


class InvalidTransition(Exception):
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
        _S.PRELIMINARY: {_S.FINAL},
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
