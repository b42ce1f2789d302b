"""/app/orders: a technologist's day (today's orders with their MPPS state and images, arrivals,
unmatched studies) and linking an unmatched study to its order through the API's own service,
with the plain form and with htmx."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.mpps.models import PerformedProcedureStep, PerformedStepStatus

from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from testapp import engine_of

Headers = dict[str, str]


def _order(
    client: TestClient, scheduler: Headers, patient_id: str, scheduled_at: datetime, **extra: Any
) -> dict[str, Any]:
    body = {
        "patientId": patient_id,
        "issuerOfPatientId": "HOSP",
        "patientName": "DOE^JANE",
        "modality": "CT",
        "procedureDescription": "CT head without contrast",
        "scheduledAt": scheduled_at.isoformat(),
        **extra,
    }
    created = client.post("/api/imaging-orders", json=body, headers=scheduler)
    assert created.status_code == 201, created.text
    order: dict[str, Any] = created.json()
    return order


def _csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page
    return found[1]


def _unmatched_study(app: FastAPI, n: int, patient_id: str) -> int:
    """A study whose images arrived under an accession number no order has."""
    study = orthanc_study(f"{UID_ROOT}.181.{n}", accession_number=f"XX{n}", patient_id=patient_id)
    return seed_study(engine_of(app), study)


def _no_inline_script(html: str) -> None:
    for script in re.findall(r"<script\b[^>]*>", html):
        assert re.search(r'\bsrc="/app/static/[a-z.]+"', script), script
    assert re.search(r"\son[a-z]+=", html) is None


def test_a_technologist_sees_todays_orders_with_their_mpps_state_not_yesterdays(
    app: FastAPI,
    technologist: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    now = datetime.now(UTC)
    today = _order(client, technologist, "PAT-T1", now, procedureDescription="CT chest today")
    yesterday = _order(client, technologist, "PAT-T2", now - timedelta(days=1))
    with Session(engine_of(app)) as session:
        session.add(
            PerformedProcedureStep(
                sop_instance_uid=f"{UID_ROOT}.182.1",
                status=PerformedStepStatus.IN_PROGRESS,
                order_id=today["id"],
                study_instance_uid=today["studyInstanceUID"],
                accession_number=today["accessionNumber"],
                calling_ae_title="CT1",
                started_at=now,
            )
        )
        session.commit()

    page = client.get("/app/orders")

    assert page.status_code == 200
    assert today["accessionNumber"] in page.text
    assert "CT chest today" in page.text
    assert yesterday["accessionNumber"] not in page.text
    today_rows = page.text.split('id="today-heading"', 1)[1].split("</table>", 1)[0]
    assert "In progress" in today_rows  # the performed step's state
    assert "Pending" in today_rows or "Scheduled" in today_rows  # the order's status
    assert 'data-live="order study"' in page.text
    assert 'hx-trigger="live-order from:body, live-study from:body"' in page.text
    _no_inline_script(page.text)
    rows = client.get("/app/orders/rows")
    assert rows.status_code == 200
    assert rows.text.startswith('<div id="orders-live"') and "<html" not in rows.text


def test_linking_an_unmatched_study_through_the_form(
    app: FastAPI,
    technologist: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    order = _order(client, technologist, "PAT-L1", datetime.now(UTC))
    study_id = _unmatched_study(app, 1, "PAT-L1")
    page = client.get("/app/orders")
    unmatched = page.text.split('id="unmatched-heading"', 1)[1]
    assert f'name="study_id" value="{study_id}"' in unmatched
    assert f'<option value="{order["id"]}"' in unmatched  # the patient's open order
    assert "arrivals-heading" in page.text

    sent = client.post(
        "/app/orders/link",
        data={"csrf_token": _csrf(page.text), "study_id": study_id, "order_id": order["id"]},
        follow_redirects=False,
    )

    assert sent.status_code == 303, sent.text
    assert sent.headers["location"] == f"/app/orders?linked={study_id}"
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert study["orderId"] == order["id"]
    [event] = [e for e in audit_events(engine_of(app), "study.linked_to_order")]
    assert event.entity_id == str(study_id) and event.actor == "technologist-pages"
    after = client.get(sent.headers["location"])
    assert f"Study {study_id} is linked" in after.text
    assert f'name="study_id" value="{study_id}"' not in after.text


def test_linking_by_accession_number_with_htmx(
    app: FastAPI,
    technologist: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    order = _order(client, technologist, "PAT-L2", datetime.now(UTC))
    study_id = _unmatched_study(app, 2, "PAT-L2")
    token = _csrf(client.get("/app/orders").text)

    sent = client.post(
        "/app/orders/link",
        data={"study_id": study_id, "accession_number": order["accessionNumber"]},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )

    assert sent.status_code == 200, sent.text
    assert sent.text.startswith('<div id="orders-live"')
    assert f"Study {study_id} is linked" in sent.text
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert study["orderId"] == order["id"]


def test_an_unknown_accession_number_is_shown_with_the_form_kept(
    app: FastAPI,
    technologist: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    study_id = _unmatched_study(app, 3, "PAT-L3")
    token = _csrf(client.get("/app/orders").text)
    data = {"csrf_token": token, "study_id": study_id, "accession_number": "NOPE123"}

    plain = client.post("/app/orders/link", data=data)
    assert plain.status_code == 400
    alert = plain.text.split('role="alert"', 1)[1].split("</p>", 1)[0]
    assert "Accession number" in alert and "NOPE123" in alert
    assert f'id="accession-{study_id}"' in plain.text
    assert 'value="NOPE123"' in plain.text  # what was typed, kept
    by_htmx = client.post(
        "/app/orders/link", data=data, headers={"HX-Request": "true", "X-CSRF-Token": token}
    )
    assert by_htmx.status_code == 200
    assert 'role="alert"' in by_htmx.text and 'value="NOPE123"' in by_htmx.text
    nothing = client.post("/app/orders/link", data={"csrf_token": token, "study_id": study_id})
    assert nothing.status_code == 400 and "choose an order" in nothing.text
    assert client.get(f"/api/studies/{study_id}", headers=technologist).json()["orderId"] is None


def test_a_conflict_is_shown_plainly(
    app: FastAPI,
    technologist: Headers,
    logged_in: Callable[[Role], TestClient],
) -> None:
    """Another patient's order: the API's 409, in the page, nothing linked."""
    client = logged_in(Role.TECHNOLOGIST)
    other = _order(client, technologist, "PAT-OTHER", datetime.now(UTC))
    study_id = _unmatched_study(app, 4, "PAT-L4")
    token = _csrf(client.get("/app/orders").text)

    refused = client.post(
        "/app/orders/link",
        data={
            "csrf_token": token,
            "study_id": study_id,
            "accession_number": other["accessionNumber"],
        },
    )

    assert refused.status_code == 409
    assert "different patient ids" in refused.text.split('role="alert"', 1)[1]
    assert client.get(f"/api/studies/{study_id}", headers=technologist).json()["orderId"] is None


def test_other_roles_and_forms_without_the_token_are_refused(
    app: FastAPI, logged_in: Callable[[Role], TestClient]
) -> None:
    study_id = _unmatched_study(app, 5, "PAT-L5")
    for role in (Role.PHYSICIAN, Role.RADIOLOGIST):
        client = logged_in(role)
        refused = client.get("/app/orders")
        assert refused.status_code == 403 and "Not allowed" in refused.text
        assert client.get("/app/orders/rows").status_code == 403
    client = logged_in(Role.TECHNOLOGIST)
    no_token = client.post("/app/orders/link", data={"study_id": study_id, "order_id": "1"})
    assert no_token.status_code == 403 and "security token" in no_token.text
    assert logged_in(Role.ADMIN).get("/app/orders").status_code == 200
