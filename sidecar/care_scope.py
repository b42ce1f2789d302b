"""Which patients' records a physician may read: the patients they have ordered for.

A patient is a patient id with its issuer (assigning authority): patient 123 of one hospital is
not patient 123 of another, so both are compared, an absent issuer matching only an absent one.
A physician is known by the provider id their account carries (the id orders name in ORC-12 /
OBR-16 or `providerId`); an account without one sees nothing scoped this way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, false
from sqlmodel import col, select

from sidecar.models.orders import ImagingOrder
from sidecar.models.studies import Study


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
