"""New DICOM identifiers for studies announced before their images."""

from __future__ import annotations

import secrets

from pydicom.uid import generate_uid
from sqlmodel import Session, select

from sidecar.models.studies import Study


def new_study_instance_uid() -> str:
    return str(generate_uid())


def new_accession_number(session: Session) -> str:
    """16 characters at most (DICOM SH); unique among the studies the sidecar knows."""
    while True:
        candidate = f"A{secrets.randbelow(10**12):012d}"
        if (
            session.exec(select(Study.id).where(Study.accession_number == candidate)).first()
            is None
        ):
            return candidate
