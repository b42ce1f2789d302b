"""Reading test helpers: ordered studies of a given priority made ready to read (as the Orthanc
sync does, at the app's clock), radiologists, and the worklist as a list of study ids."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.reading.rules import study_ready
from sidecar.studies.models import Study

from builders import UID_ROOT, SeriesSpec, orthanc_study, seed_study
from testapp import USER_PASSWORD, engine_of, login

_numbers = itertools.count(1)


def ready_study(
    app: FastAPI,
    client: TestClient,
    scheduler: dict[str, str],
    *,
    now: datetime,
    priority: str = "ROUTINE",
    patient_id: str = "PAT-0001",
    modality: str = "CT",
    body_part: str = "HEAD",
    procedure_code: str = "CTHEAD",
) -> int:
    """An order of that priority, its study's images arrived and linked, made ready to read at
    `now` (assignment rules applied): the study id."""
    n = next(_numbers)
    body: dict[str, Any] = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "patientName": "DOE^JANE",
        "modality": modality,
        "bodyPart": body_part,
        "procedureCode": procedure_code,
        "procedureDescription": f"{modality} {body_part}",
        "priority": priority,
        "clinicalIndication": "Fall, headache",
        "placerOrderNumber": f"RD-{n}",
    }
    created = client.post("/api/imaging-orders", json=body, headers=scheduler)
    assert created.status_code == 201, created.text
    order = created.json()
    study = orthanc_study(
        f"{UID_ROOT}.88.{n}",
        accession_number=order["accessionNumber"],
        patient_id=patient_id,
        series=[SeriesSpec(uid=f"{UID_ROOT}.88.{n}.1", modality=modality, body_part=body_part)],
    )
    study_id = seed_study(engine_of(app), study)
    linked = client.post(
        f"/api/studies/{study_id}/link-order", json={"orderId": order["id"]}, headers=scheduler
    )
    assert linked.status_code == 200, linked.text
    with Session(engine_of(app)) as session:
        row = session.get(Study, study_id)
        assert row is not None
        study_ready(session, row, now=now)
        session.commit()
    return study_id


def radiologist(app: FastAPI, client: TestClient, username: str) -> tuple[int, dict[str, str]]:
    """A radiologist's account: (user id, auth headers)."""
    with Session(engine_of(app)) as session:
        user = User(
            username=username, password_hash=hash_password(USER_PASSWORD), role=Role.RADIOLOGIST
        )
        session.add(user)
        session.commit()
        assert user.id is not None
        user_id = user.id
    return user_id, login(client, username, USER_PASSWORD)


def worklist_ids(client: TestClient, headers: dict[str, str], **params: Any) -> list[int]:
    response = client.get("/api/reading-worklist", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["studyId"] for item in response.json()["items"]]
