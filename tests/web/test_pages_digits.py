"""Numbers typed into the pages' forms and queries, and /api/events' lastEventId: a character
Python calls a digit but int() refuses (a superscript two), or a number larger than any record
id, is bad input answered with a clear error, never a server error."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role

from builders import UID_ROOT, orthanc_study, seed_study
from testapp import engine_of

Headers = dict[str, str]
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() says True; int() raises ValueError


def _csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page)
    assert found, page
    return found[1]


@pytest.mark.one_database
def test_a_last_event_id_that_is_not_ascii_digits_is_refused(
    client: TestClient, admin_headers: Headers
) -> None:
    refused = client.get(f"/api/events?lastEventId={SUPERSCRIPT_TWO}", headers=admin_headers)
    assert refused.status_code == 422, refused.text
    assert "lastEventId" in refused.text


@pytest.mark.one_database
def test_a_worklist_offset_that_is_not_ascii_digits_is_refused(
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    refused = client.get("/app/worklist", params={"offset": SUPERSCRIPT_TWO})
    assert refused.status_code == 400, refused.text
    assert "offset" in refused.text


@pytest.mark.one_database
def test_an_order_choice_that_is_not_ascii_digits_is_refused(
    app: FastAPI, logged_in: Callable[[Role], TestClient]
) -> None:
    client = logged_in(Role.TECHNOLOGIST)
    study_id = seed_study(engine_of(app), orthanc_study(f"{UID_ROOT}.919.1", patient_id="P-U1"))
    token = _csrf(client.get("/app/orders").text)
    data = {"csrf_token": token, "study_id": study_id, "order_id": SUPERSCRIPT_TWO}
    refused = client.post("/app/orders/link", data=data)
    assert refused.status_code == 400, refused.text
    assert "Order: not an order of the list" in refused.text


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("template_id", SUPERSCRIPT_TWO, "choose a template"),
        ("template_id", "9" * 25, "not found"),
        ("version", SUPERSCRIPT_TWO, "version"),
    ],
)
def test_the_report_editor_refuses_numbers_it_cannot_read(
    app: FastAPI,
    logged_in: Callable[[Role], TestClient],
    field: str,
    value: str,
    said: str,
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    study_id = seed_study(engine_of(app), orthanc_study(f"{UID_ROOT}.919.2", patient_id="P-U2"))
    page = client.get(f"/app/studies/{study_id}")
    assert page.status_code == 200, page.text
    action = "template" if field == "template_id" else "save"
    data = {"csrf_token": _csrf(page.text), "action": action, field: value, "findings": "Kept."}

    refused = client.post(f"/app/studies/{study_id}/report", data=data)

    assert refused.status_code == 400, refused.text
    assert said in refused.text
    assert "Kept." in refused.text  # the text sent, shown again
