"""Reporting test helpers: an ordered study whose images have arrived, ready to be reported."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password

from builders import UID_ROOT, orthanc_study, seed_study
from testapp import engine_of

_numbers = itertools.count(1)

SECTIONS = {
    "technique": "CT of the head without contrast.",
    "comparison": "None.",
    "findings": "Large acute subdural haematoma on the left | 12 mm midline shift ^ noted.",
    "impression": "Acute left subdural haematoma with mass effect.",
    "recommendations": "Urgent neurosurgical consultation.",
}


def ordered_study(
    app: FastAPI,
    client: TestClient,
    scheduler: dict[str, str],
    *,
    patient_id: str = "PAT-0001",
    provider_id: str | None = "DR-0042",
    issuer: str = "HOSP",
) -> tuple[int, dict[str, Any]]:
    """An imaging order and its study, images arrived and linked: (study id, order JSON)."""
    n = next(_numbers)
    body: dict[str, Any] = {
        "patientId": patient_id,
        "issuerOfPatientId": issuer,
        "patientName": "DOE^JANE",
        "patientBirthDate": "1970-01-01",
        "patientSex": "F",
        "modality": "CT",
        "procedureCode": "CTHEAD",
        "procedureDescription": "CT head without contrast",
        "orderingProvider": "HOUSE^GREGORY",
        "placerOrderNumber": f"PL-{n}",
        "clinicalIndication": "Fall, headache",
        "scheduledAt": "2026-11-23T09:00:00+01:00",
    }
    if provider_id:
        body["providerId"] = provider_id
    created = client.post("/api/imaging-orders", json=body, headers=scheduler)
    assert created.status_code == 201, created.text
    order = created.json()
    study = orthanc_study(
        f"{UID_ROOT}.77.{n}", accession_number=order["accessionNumber"], patient_id=patient_id
    )
    study_id = seed_study(engine_of(app), study)
    linked = client.post(
        f"/api/studies/{study_id}/link-order", json={"orderId": order["id"]}, headers=scheduler
    )
    assert linked.status_code == 200, linked.text
    return study_id, client.get(f"/api/imaging-orders/{order['id']}", headers=scheduler).json()


def add_user(app: FastAPI, username: str, role: Role, *, provider_id: str | None = None) -> int:
    with Session(engine_of(app)) as session:
        user = User(
            username=username,
            password_hash=hash_password("user-password-for-tests"),
            role=role,
            provider_id=provider_id,
        )
        session.add(user)
        session.commit()
        assert user.id is not None
        return user.id


def write_report(
    client: TestClient, radiologist: dict[str, str], study_id: int, **sections: str
) -> dict[str, Any]:
    response = client.post(
        "/api/reports", json={"studyId": study_id, **(sections or SECTIONS)}, headers=radiologist
    )
    assert response.status_code == 201, response.text
    report: dict[str, Any] = response.json()
    return report


def sign(client: TestClient, radiologist: dict[str, str], report_id: int) -> dict[str, Any]:
    response = client.post(f"/api/reports/{report_id}/sign", headers=radiologist)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report
