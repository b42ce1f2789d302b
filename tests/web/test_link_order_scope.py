"""Linking a study to an order reaches only what the caller may read: a technologist limited to
a facility links neither a study nor an order of another facility, through the orders page or
the API (both go through sidecar.studies.order_link). Out of reach answers 404, as a record that
does not exist, and nothing changes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.studies.models import Study

from builders import UID_ROOT, orthanc_study, seed_study
from page_session import form_login
from testapp import USER_PASSWORD, engine_of, login

Headers = dict[str, str]


def _north_technologist(app: FastAPI) -> str:
    with Session(engine_of(app)) as session:
        user = User(
            username="tech.north",
            password_hash=hash_password(USER_PASSWORD),
            role=Role.TECHNOLOGIST,
            facilities=["NORTH"],
        )
        session.add(user)
        session.commit()
    return "tech.north"


def _order(client: TestClient, headers: Headers, patient_id: str, facility: str) -> int:
    body = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "patientName": "DOE^JANE",
        "modality": "CT",
        "procedureDescription": "CT head",
        "scheduledAt": datetime.now(UTC).isoformat(),
        "facilityId": facility,
    }
    created = client.post("/api/imaging-orders", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def _study(app: FastAPI, n: int, patient_id: str, facility: str) -> int:
    study = orthanc_study(f"{UID_ROOT}.918.{n}", accession_number=f"RV{n}", patient_id=patient_id)
    study_id = seed_study(engine_of(app), study)
    with Session(engine_of(app)) as session:
        found = session.get(Study, study_id)
        assert found is not None
        found.facility_id = facility
        session.add(found)
        session.commit()
    return study_id


def _order_of(app: FastAPI, study_id: int) -> int | None:
    with Session(engine_of(app)) as session:
        return session.exec(select(Study.order_id).where(Study.id == study_id)).one()


def _csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page
    return found[1]


def test_a_facility_limited_technologist_links_nothing_of_another_facility_on_the_page(
    app: FastAPI, client: TestClient, technologist: Headers
) -> None:
    username = _north_technologist(app)
    south_order = _order(client, technologist, "PAT-RV1", "SOUTH")
    south_study = _study(app, 1, "PAT-RV1", "SOUTH")
    assert form_login(client, username, USER_PASSWORD, next="/app/").status_code == 303
    page = client.get("/app/orders")
    assert page.status_code == 200, page.text
    assert f'value="{south_study}"' not in page.text  # not offered: out of reach

    sent = client.post(
        "/app/orders/link",
        data={"csrf_token": _csrf(page.text), "study_id": south_study, "order_id": south_order},
        follow_redirects=False,
    )

    assert sent.status_code == 404, sent.text
    assert _order_of(app, south_study) is None


def test_a_facility_limited_technologist_links_no_order_of_another_facility_by_api(
    app: FastAPI, client: TestClient, technologist: Headers
) -> None:
    north = login(client, _north_technologist(app), USER_PASSWORD)
    north_study = _study(app, 2, "PAT-RV2", "NORTH")
    south_order = _order(client, technologist, "PAT-RV2", "SOUTH")
    assert client.get(f"/api/imaging-orders/{south_order}", headers=north).status_code == 404

    sent = client.post(
        f"/api/studies/{north_study}/link-order", json={"orderId": south_order}, headers=north
    )

    assert sent.status_code == 404, sent.text
    assert _order_of(app, north_study) is None
