"""Report templates (issue 14, item 6): administered by administrators, suggested for a study
best first, a report started from one, and no signature while a `[[field]]` is unfilled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role

from builders import audit_events
from finding_helpers import T0
from reading_helpers import radiologist, ready_study
from testapp import engine_of

Headers = dict[str, str]
URL = "/api/report-templates"
CT_HEAD = {
    "technique": "Axial CT of the head without contrast.",
    "findings": "Haemorrhage of [[size]] mm at the level of [[level]].",
    "impression": "[[impression]]",
}


def add(client: TestClient, admin: Headers, **body: Any) -> dict[str, Any]:
    response = client.post(URL, json=body, headers=admin)
    assert response.status_code == 201, response.text
    template: dict[str, Any] = response.json()
    return template


def test_templates_are_suggested_best_first_and_a_report_starts_from_one(
    app: FastAPI, client: TestClient, technologist: Headers, admin_headers: Headers
) -> None:
    generic = add(
        client, admin_headers, name="Any CT", modality="CT", sections={"technique": "CT."}
    )
    head = add(
        client, admin_headers, name="CT head", modality="CT", bodyPart="head", sections=CT_HEAD
    )
    exact = add(
        client,
        admin_headers,
        name="CT head protocol",
        procedureCode="cthead",
        sections={"technique": "Protocol CTHEAD."},
    )
    add(
        client,
        admin_headers,
        name="MR knee",
        modality="MR",
        bodyPart="KNEE",
        sections={"findings": "Menisci intact."},
    )
    assert head["fields"] == ["size", "level", "impression"]
    assert head["sections"] == CT_HEAD
    study = ready_study(app, client, technologist, now=T0)
    _, reader = radiologist(app, client, "dr.reader")

    suggested = client.get(URL, params={"studyId": study}, headers=reader)
    assert suggested.status_code == 200, suggested.text
    assert [t["name"] for t in suggested.json()] == ["CT head protocol", "CT head", "Any CT"]
    assert [t["id"] for t in client.get(URL, headers=reader).json()][:3] == [
        generic["id"],
        head["id"],
        exact["id"],
    ]

    created = client.post(
        "/api/reports",
        json={"studyId": study, "templateId": head["id"], "technique": "Helical CT."},
        headers=reader,
    )
    assert created.status_code == 201, created.text
    report = created.json()
    assert report["technique"] == "Helical CT."  # what the radiologist sent wins
    assert report["findings"] == CT_HEAD["findings"]
    assert report["impression"] == "[[impression]]"
    created_event = audit_events(engine_of(app), "report.created")[-1]
    assert created_event.detail["template_id"] == head["id"]

    refused = client.post(f"/api/reports/{report['id']}/sign", headers=reader)
    assert refused.status_code == 409
    assert "size, level, impression" in refused.json()["error"]["message"]
    filled = client.patch(
        f"/api/reports/{report['id']}",
        json={
            "findings": "Haemorrhage of 12 mm at the level of the left temporal lobe.",
            "impression": "Acute haemorrhage.",
        },
        headers=reader,
    )
    assert filled.status_code == 200
    signed = client.post(f"/api/reports/{report['id']}/sign", headers=reader)
    assert signed.status_code == 200, signed.text
    # Nor can an amendment bring a marker back.
    amend = client.post(
        f"/api/reports/{report['id']}/amend",
        json={"reason": "addendum", "recommendations": "Follow-up in [[weeks]] weeks."},
        headers=reader,
    )
    assert amend.status_code == 409 and "weeks" in amend.json()["error"]["message"]


def test_templates_are_administered_by_administrators_and_checked(
    app: FastAPI,
    client: TestClient,
    headers_for: Callable[[Role], Headers],
    admin_headers: Headers,
    technologist: Headers,
) -> None:
    template = add(client, admin_headers, name="CT head", modality="CT", sections=CT_HEAD)
    path = f"{URL}/{template['id']}"
    _, reader = radiologist(app, client, "dr.reader")
    for headers in (reader, technologist, headers_for(Role.PHYSICIAN)):
        assert (
            client.post(URL, json={"name": "x", "sections": CT_HEAD}, headers=headers).status_code
            == 403
        )
        assert client.patch(path, json={"name": "y"}, headers=headers).status_code == 403
        assert client.delete(path, headers=headers).status_code == 403
    for headers in (technologist, headers_for(Role.PHYSICIAN), headers_for(Role.INTEGRATION)):
        assert client.get(URL, headers=headers).status_code == 403
    for bad in (
        {"name": "x", "sections": {}},
        {"name": "x", "sections": {"findings": "  "}},
        {"name": "x", "sections": {"conclusion": "no such section"}},
        {"name": "", "sections": CT_HEAD},
        {"name": "x", "modality": "ct scan", "sections": CT_HEAD},
        {"sections": CT_HEAD},
    ):
        assert client.post(URL, json=bad, headers=admin_headers).status_code == 422, bad
    assert client.patch(path, json={}, headers=admin_headers).status_code == 422
    assert client.patch(path, json={"name": None}, headers=admin_headers).status_code == 422
    renamed = client.patch(
        path, json={"name": "CT brain", "sections": {"impression": "[[x]]"}}, headers=admin_headers
    )
    assert renamed.status_code == 200
    assert (renamed.json()["name"], renamed.json()["sections"], renamed.json()["fields"]) == (
        "CT brain",
        {"impression": "[[x]]"},
        ["x"],
    )
    assert client.get(URL, params={"studyId": 424242}, headers=reader).status_code == 404
    assert client.get(URL, params={"studyId": 0}, headers=reader).status_code == 422
    study = ready_study(app, client, technologist, now=T0)
    unknown = client.post(
        "/api/reports", json={"studyId": study, "templateId": 424242}, headers=reader
    )
    assert unknown.status_code == 400 and "424242" in unknown.json()["error"]["message"]
    assert client.delete(path, headers=admin_headers).status_code == 204
    assert client.delete(path, headers=admin_headers).status_code == 404
    actions = [e.action for e in audit_events(engine_of(app)) if e.entity_type == "report_template"]
    assert actions == [
        "report_template.created",
        "report_template.updated",
        "report_template.deleted",
    ]
