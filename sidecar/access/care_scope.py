"""Which patients' records a caller may read: the one place the physician's "own patients only"
rule is written, given to routes as a dependency (`CareScopeDep`).

Admins, radiologists and technologists read every patient's records. A physician reads the
signed reports of the patients they have ordered for, and the critical findings they were
notified of.

A patient is a patient id with its issuer (assigning authority): patient 123 of one hospital is
not patient 123 of another, so both are compared, an absent issuer matching only an absent one.
A physician is known by the provider id their account carries (the id orders name in ORC-12 /
OBR-16 or `providerId`); an account without one sees nothing scoped this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import exists, false
from sqlmodel import col, select

from sidecar.accounts.dependencies import CurrentUser
from sidecar.accounts.models import Role, User
from sidecar.findings.models import CriticalFinding, FindingNotification
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport, ReportStatus
from sidecar.studies.models import Study


def their_patients_studies(provider_id: str | None) -> Any:
    """A condition on Study: the study's patient is one the physician has ordered for."""
    if not provider_id:
        # `provider_id == None` would render IS NULL: every order without a provider would match.
        return false()
    return exists().where(
        col(ImagingOrder.provider_id) == provider_id,
        col(ImagingOrder.patient_id) == col(Study.patient_id),
        col(ImagingOrder.issuer_of_patient_id).is_not_distinct_from(
            col(Study.issuer_of_patient_id)
        ),
    )


def their_patients_study_ids(provider_id: str | None) -> Any:
    """The ids of those studies, for conditions on records that belong to a study."""
    return select(Study.id).where(their_patients_studies(provider_id))


@dataclass(frozen=True)
class CareScope:
    """The caller's reach, as conditions to add to a query (none when it is unlimited)."""

    user: User

    @property
    def limited(self) -> bool:
        return self.user.role == Role.PHYSICIAN

    def reports(self) -> list[Any]:
        """Signed reports of the physician's patients."""
        if not self.limited:
            return []
        return [
            RadiologyReport.status != ReportStatus.PRELIMINARY,
            col(RadiologyReport.study_id).in_(their_patients_study_ids(self.user.provider_id)),
        ]

    def findings(self) -> list[Any]:
        """Findings the physician was notified of (as ordering provider or escalation
        contact, by their provider id); none without a provider id."""
        if not self.limited:
            return []
        if not self.user.provider_id:
            return [false()]
        sent_to_them = select(FindingNotification.finding_id).where(
            FindingNotification.recipient == self.user.provider_id
        )
        return [col(CriticalFinding.id).in_(sent_to_them)]


def care_scope(user: CurrentUser) -> CareScope:
    return CareScope(user)


CareScopeDep = Annotated[CareScope, Depends(care_scope)]
