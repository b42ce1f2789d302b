"""New DICOM identifiers for orders and for studies announced before their images."""

from __future__ import annotations

import secrets

from pydicom.uid import generate_uid
from sqlmodel import Session, select

from sidecar.orders.models import ImagingOrder
from sidecar.studies.models import Study


def new_study_instance_uid() -> str:
    return str(generate_uid())


def new_accession_number(session: Session) -> str:
    """16 characters at most (DICOM SH); unique among the orders and studies the sidecar knows:
    studies are matched to orders by accession number, so one must never name both."""
    while True:
        candidate = f"A{secrets.randbelow(10**12):012d}"
        taken_by_order = session.exec(
            select(ImagingOrder.id).where(ImagingOrder.accession_number == candidate)
        ).first()
        taken_by_study = session.exec(
            select(Study.id).where(Study.accession_number == candidate)
        ).first()
        if taken_by_order is None and taken_by_study is None:
            return candidate
