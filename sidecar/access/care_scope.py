"""Which patients' records a caller may read: the one place the care-relationship rule is
written, given to routes as a dependency (`CareScopeDep`) and to the viewer fronts.

Administrators, radiologists, technologists and integrations read every patient's records
(department-wide work). A physician reads the records of the patients they care for:

- a patient they are the ordering provider or the referring physician of one order of (matched
  on the provider id the account carries, the id orders name in ORC-12 / OBR-16 / PV1-8 or
  `providerId` / `referringProviderId`);
- a patient they hold an active emergency access to (sidecar.access.emergency).

A patient is a patient id with its issuer (assigning authority): patient 123 of one hospital is
not patient 123 of another, so both are compared, an absent issuer matching only an absent one. A
study's patient is the patient of the order it is linked to (linking sets the study's patient id
and issuer from the order), else the PatientID and IssuerOfPatientID of its images.

Facilities. A user may be limited to facilities (`facilities` on the account; empty: all of
them), whatever their role, administrators included: they then read only the orders of those
facilities and the studies done there (a study's facility is its order's, else that of the
modality that sent it), and what hangs from those studies. A study of no known facility is
outside every such limit. The two limits add up: a physician limited to facilities reads their
patients' records of those facilities.

An analyzer (a machine account performing AI work items, sidecar.analyses) reaches the studies
of the work items it holds (IN PROGRESS, claimed by it) and their images, while it holds them,
and nothing else: no order, patient, report or finding. It has no use of the API besides
(sidecar.accounts.dependencies refuses it), so this is what the DICOMweb fronts, STOW-RS and the
event stream ask of it. A role this module does not name reaches nothing.

Of those patients' records, a physician reads studies, images, orders, signed reports (not
drafts) and critical findings; and the findings they were notified of, whoever the patient. What
lies outside the scope answers 404, as a record that does not exist does: the answer confirms
nothing. Lists are filtered in the query, so totals and pages count only what may be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import exists, false, or_
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from sidecar.access.models import EmergencyAccess
from sidecar.accounts.dependencies import CurrentUser
from sidecar.accounts.models import Role, User
from sidecar.analyses.models import Workitem, WorkitemState
from sidecar.core.dependencies import ClockDep
from sidecar.findings.models import CriticalFinding, FindingNotification
from sidecar.orders.models import ImagingOrder
from sidecar.patients.models import Patient
from sidecar.reports.models import RadiologyReport, ReportStatus
from sidecar.studies.models import Image, Study

#: Roles whose reach is the whole department (a facility limit aside).
DEPARTMENT_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.INTEGRATION})
#: Roles whose reach is the patients they care for.
CARE_LIMITED_ROLES = frozenset({Role.PHYSICIAN})
#: Roles whose reach is the studies of the work items they hold.
WORKITEM_LIMITED_ROLES = frozenset({Role.ANALYZER})


def reach_limited(role: Role) -> bool:
    """Whether some studies are out of this role's reach (facilities aside)."""
    return role not in DEPARTMENT_ROLES


@dataclass(frozen=True)
class CareScope:
    """The caller's reach at `now`, as conditions to add to a query (none when unlimited)."""

    user: User
    now: datetime

    @property
    def care_limited(self) -> bool:
        """The caller reads only the patients they care for."""
        return self.user.role in CARE_LIMITED_ROLES

    @property
    def facilities(self) -> tuple[str, ...]:
        """The facilities the caller is limited to; empty: all of them."""
        return tuple(self.user.facilities or ())

    @property
    def workitem_limited(self) -> bool:
        """The caller reads only the studies of the work items it holds (an analyzer)."""
        return self.user.role in WORKITEM_LIMITED_ROLES

    @property
    def department_wide(self) -> bool:
        return self.user.role in DEPARTMENT_ROLES

    @property
    def limited(self) -> bool:
        """Some records are out of the caller's reach."""
        return reach_limited(self.user.role) or bool(self.facilities)

    def _neither(self) -> bool:
        """A role that reaches only what this scope names by study: no order, no patient, no
        report, no finding (an analyzer, or a role this module does not know)."""
        return not self.department_wide and not self.care_limited

    def cares_for(self, patient_id: Any, issuer_of_patient_id: Any) -> Any:
        """A condition: the caller cares for this patient (columns or values)."""
        reasons = []
        provider_id = self.user.provider_id
        if provider_id:  # `== None` would render IS NULL: every order without one would match
            order = aliased(ImagingOrder)
            reasons.append(
                exists().where(
                    or_(
                        col(order.provider_id) == provider_id,
                        col(order.referring_provider_id) == provider_id,
                    ),
                    col(order.patient_id) == patient_id,
                    col(order.issuer_of_patient_id).is_not_distinct_from(issuer_of_patient_id),
                )
            )
        reasons.append(
            exists().where(
                col(EmergencyAccess.user_id) == self.user.id,
                col(EmergencyAccess.expires_at) > self.now,
                col(EmergencyAccess.patient_id) == patient_id,
                col(EmergencyAccess.issuer_of_patient_id).is_not_distinct_from(
                    issuer_of_patient_id
                ),
            )
        )
        return or_(*reasons) if self.user.id is not None else false()

    def studies(self) -> list[Any]:
        """Conditions on Study."""
        if self._neither() and not self.workitem_limited:
            return [false()]
        conditions = []
        if self.workitem_limited:
            conditions.append(col(Study.id).in_(self.held_study_ids()))
        if self.facilities:
            conditions.append(col(Study.facility_id).in_(self.facilities))
        if self.care_limited:
            conditions.append(
                self.cares_for(col(Study.patient_id), col(Study.issuer_of_patient_id))
            )
        return conditions

    def held_study_ids(self) -> Any:
        """The studies of the work items the caller holds (IN PROGRESS, claimed by it)."""
        return select(Workitem.study_id).where(
            col(Workitem.state) == WorkitemState.IN_PROGRESS,
            col(Workitem.performer_id) == self.user.id,
        )

    def workitems(self) -> list[Any]:
        """Conditions on Workitem for a requester (administrator, radiologist): those of the
        studies in reach. An analyzer's are sidecar.analyses.workitem_states.visible."""
        if not self.limited:
            return []
        if self._neither():
            return [false()]
        return [col(Workitem.study_id).in_(self.study_ids())]

    def study_ids(self) -> Any:
        """The ids of the studies in reach, for conditions on what belongs to a study."""
        return select(Study.id).where(*self.studies())

    def orders(self) -> list[Any]:
        """Conditions on ImagingOrder: every order of a patient in reach."""
        if self._neither():
            return [false()]
        conditions = []
        if self.facilities:
            conditions.append(col(ImagingOrder.facility_id).in_(self.facilities))
        if self.care_limited:
            conditions.append(
                self.cares_for(col(ImagingOrder.patient_id), col(ImagingOrder.issuer_of_patient_id))
            )
        return conditions

    def patients(self) -> list[Any]:
        """Conditions on Patient (the registry): a patient with an order or a study in reach."""
        if not self.limited:
            return []
        if self._neither():
            return [false()]
        record = col(Patient.id)
        return [
            or_(
                exists().where(col(ImagingOrder.patient_record_id) == record, *self.orders()),
                exists().where(col(Study.patient_record_id) == record, *self.studies()),
            )
        ]

    def images(self) -> list[Any]:
        """Conditions on Image."""
        if not self.limited:
            return []
        return [col(Image.study_id).in_(self.study_ids())]

    def reports(self) -> list[Any]:
        """Conditions on RadiologyReport: signed reports of the studies in reach."""
        if not self.limited:
            return []
        if self._neither():
            return [false()]
        conditions: list[Any] = [col(RadiologyReport.study_id).in_(self.study_ids())]
        if self.care_limited:
            conditions.append(RadiologyReport.status != ReportStatus.PRELIMINARY)
        return conditions

    def findings(self) -> list[Any]:
        """Conditions on CriticalFinding: the findings of the studies in reach, and those the
        physician was notified of (as ordering provider or escalation contact) of their
        facilities."""
        if not self.limited:
            return []
        if self._neither():
            return [false()]
        in_reach = col(CriticalFinding.study_id).in_(self.study_ids())
        if not self.care_limited or not self.user.provider_id:
            return [in_reach]
        sent_to_them = select(FindingNotification.finding_id).where(
            FindingNotification.recipient == self.user.provider_id,
            col(FindingNotification.finding_id).is_not(None),
        )
        conditions = [or_(in_reach, col(CriticalFinding.id).in_(sent_to_them))]
        if self.facilities:
            of_facilities = select(Study.id).where(col(Study.facility_id).in_(self.facilities))
            conditions.append(col(CriticalFinding.study_id).in_(of_facilities))
        return conditions


def care_scope(user: CurrentUser, clock: ClockDep) -> CareScope:
    return CareScope(user, clock())


CareScopeDep = Annotated[CareScope, Depends(care_scope)]
