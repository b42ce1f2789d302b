"""Assignment rules (issue 14, item 3): which pool member a study ready to read goes to, and the
rules' administration. The C-STORE run of the same rules is in test_reading_stack.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role

from builders import audit_events
from finding_helpers import T0
from reading_helpers import radiologist, ready_study
from testapp import engine_of

Headers = dict[str, str]
RULES = "/api/assignment-rules"


def holder_of(client: TestClient, headers: Headers, study_id: int) -> str | None:
    items = client.get("/api/reading-worklist", params={"limit": 1000}, headers=headers).json()[
        "items"
    ]
    holder: dict[str, Any] | None = next(i for i in items if i["studyId"] == study_id)["assignedTo"]
    return holder["name"] if holder else None


def add_rule(client: TestClient, admin: Headers, **body: Any) -> dict[str, Any]:
    response = client.post(RULES, json={"name": "rule", **body}, headers=admin)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


def test_the_pool_member_with_room_and_least_work_gets_it_never_one_unavailable(
    app: FastAPI, client: TestClient, technologist: Headers, admin_headers: Headers
) -> None:
    busy, busy_h = radiologist(app, client, "dr.busy")
    away, _ = radiologist(app, client, "dr.away")
    free, _ = radiologist(app, client, "dr.free")
    add_rule(client, admin_headers, modality="CT", pool=[busy, away, free])
    # dr.busy already reads one study and may hold one at most; dr.away is away.
    held = ready_study(app, client, technologist, now=T0, modality="MR", patient_id="P-9")
    assert client.post(f"/api/studies/{held}/claim", headers=busy_h).status_code == 200
    for user_id, change in ((busy, {"maxOpen": 1}), (away, {"available": False})):
        patched = client.patch(f"/api/users/{user_id}", json=change, headers=admin_headers)
        assert patched.status_code == 200, patched.text
        assert patched.json()[next(iter(change))] == next(iter(change.values()))

    first = ready_study(app, client, technologist, now=T0, patient_id="P-1")
    assert holder_of(client, admin_headers, first) == "dr.free"
    # dr.free now has one open study; dr.busy is at its maximum, so dr.free again.
    second = ready_study(app, client, technologist, now=T0, patient_id="P-2")
    assert holder_of(client, admin_headers, second) == "dr.free"
    # With room again, dr.busy (one open study, none STAT) and dr.free (two) : dr.busy.
    client.patch(f"/api/users/{busy}", json={"maxOpen": None}, headers=admin_headers)
    third = ready_study(app, client, technologist, now=T0, patient_id="P-3")
    assert holder_of(client, admin_headers, third) == "dr.busy"
    # Available again, dr.away has nothing open: the next is theirs.
    client.patch(f"/api/users/{away}", json={"available": True}, headers=admin_headers)
    fourth = ready_study(app, client, technologist, now=T0, patient_id="P-4")
    assert holder_of(client, admin_headers, fourth) == "dr.away"
    # Unmatched (MR): stays unassigned.
    mr = ready_study(app, client, technologist, now=T0, modality="MR", patient_id="P-5")
    assert holder_of(client, admin_headers, mr) is None
    events = audit_events(engine_of(app), "study.reading_assigned")
    assert {e.actor for e in events} == {"system:reading-rules"}
    assert [e.detail["radiologist_id"] for e in events] == [free, free, busy, away]


def test_stat_work_counts_first(
    app: FastAPI, client: TestClient, technologist: Headers, admin_headers: Headers
) -> None:
    a, a_h = radiologist(app, client, "dr.a")
    b, b_h = radiologist(app, client, "dr.b")
    # dr.a holds one STAT study, dr.b two routine ones: dr.b has less STAT work.
    stat = ready_study(app, client, technologist, now=T0, priority="STAT", patient_id="P-1")
    client.post(f"/api/studies/{stat}/claim", headers=a_h)
    for patient in ("P-2", "P-3"):
        study = ready_study(app, client, technologist, now=T0, patient_id=patient)
        client.post(f"/api/studies/{study}/claim", headers=b_h)
    add_rule(client, admin_headers, pool=[a, b])
    study = ready_study(app, client, technologist, now=T0, patient_id="P-4")
    assert holder_of(client, admin_headers, study) == "dr.b"


def test_the_same_patient_goes_to_the_same_reader_when_in_the_pool(
    app: FastAPI, client: TestClient, technologist: Headers, admin_headers: Headers
) -> None:
    a, a_h = radiologist(app, client, "dr.a")
    b, _ = radiologist(app, client, "dr.b")
    outside, outside_h = radiologist(app, client, "dr.outside")
    for patient in ("P-7", "P-8"):
        study = ready_study(app, client, technologist, now=T0, patient_id=patient)
        client.post(f"/api/studies/{study}/claim", headers=a_h)
    add_rule(client, admin_headers, bodyPart="head", pool=[a, b])
    # dr.a has more open work but holds this patient's other unread study.
    same = ready_study(app, client, technologist, now=T0, patient_id="P-7")
    assert holder_of(client, admin_headers, same) == "dr.a"
    other = ready_study(app, client, technologist, now=T0, patient_id="P-9")
    assert holder_of(client, admin_headers, other) == "dr.b"
    # A reader outside the pool holding the patient's study does not pull it out of the pool.
    held = ready_study(app, client, technologist, now=T0, patient_id="P-10", modality="MR")
    client.post(f"/api/studies/{held}/claim", headers=outside_h)
    again = ready_study(app, client, technologist, now=T0 + timedelta(minutes=1), patient_id="P-10")
    assert holder_of(client, admin_headers, again) in {"dr.a", "dr.b"}
    assert outside


def test_rules_match_priority_and_procedure_code_in_order(
    app: FastAPI, client: TestClient, technologist: Headers, admin_headers: Headers
) -> None:
    a, _ = radiologist(app, client, "dr.neuro")
    b, _ = radiologist(app, client, "dr.general")
    add_rule(client, admin_headers, name="general", position=2, pool=[b])
    add_rule(
        client,
        admin_headers,
        name="neuro stat",
        position=1,
        priority="STAT",
        procedureCode="cthead",
        pool=[a],
    )
    stat = ready_study(app, client, technologist, now=T0, priority="STAT", patient_id="P-1")
    routine = ready_study(app, client, technologist, now=T0, patient_id="P-2")
    other = ready_study(
        app,
        client,
        technologist,
        now=T0,
        priority="STAT",
        procedure_code="CTCHEST",
        body_part="CHEST",
        patient_id="P-3",
    )
    assert holder_of(client, admin_headers, stat) == "dr.neuro"
    assert holder_of(client, admin_headers, routine) == "dr.general"
    assert holder_of(client, admin_headers, other) == "dr.general"
    # A disabled member gets nothing; disabled rules are skipped.
    assert client.post(f"/api/users/{b}/disable", headers=admin_headers).status_code == 200
    left = ready_study(app, client, technologist, now=T0, patient_id="P-4")
    assert holder_of(client, admin_headers, left) is None


def test_rules_are_administered_by_administrators_only(
    app: FastAPI,
    client: TestClient,
    headers_for: Callable[[Role], Headers],
    admin_headers: Headers,
) -> None:
    reader, reader_h = radiologist(app, client, "dr.reader")
    rule = add_rule(client, admin_headers, modality="CT", pool=[reader, reader])
    assert rule["pool"] == [reader]
    assert (rule["position"], rule["enabled"], rule["priority"]) == (0, True, None)
    path = f"{RULES}/{rule['id']}"
    for headers in (reader_h, *(headers_for(r) for r in (Role.TECHNOLOGIST, Role.PHYSICIAN))):
        assert client.get(RULES, headers=headers).status_code == 403
        assert (
            client.post(RULES, json={"name": "x", "pool": [reader]}, headers=headers).status_code
            == 403
        )
        assert client.patch(path, json={"enabled": False}, headers=headers).status_code == 403
        assert client.delete(path, headers=headers).status_code == 403
    patched = client.patch(path, json={"enabled": False, "priority": "STAT"}, headers=admin_headers)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["enabled"], patched.json()["priority"]) == (False, "STAT")
    assert [r["id"] for r in client.get(RULES, headers=admin_headers).json()] == [rule["id"]]
    for bad in (
        {"name": "x", "pool": []},
        {"name": "x"},
        {"name": "x", "pool": [0]},
        {"name": "x", "pool": [reader], "priority": "SOON"},
        {"name": "x", "pool": [reader], "modality": "c t"},
        {"name": "", "pool": [reader]},
        {"name": "x", "pool": [reader], "colour": "red"},
    ):
        assert client.post(RULES, json=bad, headers=admin_headers).status_code == 422, bad
    unknown = client.post(RULES, json={"name": "x", "pool": [424242]}, headers=admin_headers)
    assert unknown.status_code == 400 and "424242" in unknown.json()["error"]["message"]
    admin_pool = client.post(RULES, json={"name": "x", "pool": [1]}, headers=admin_headers)
    assert (
        admin_pool.status_code == 400
        and "not radiologists" in admin_pool.json()["error"]["message"]
    )
    assert client.patch(path, json={}, headers=admin_headers).status_code == 422
    assert client.patch(path, json={"pool": None}, headers=admin_headers).status_code == 422
    assert (
        client.patch(f"{RULES}/424242", json={"enabled": True}, headers=admin_headers).status_code
        == 404
    )
    assert client.delete(path, headers=admin_headers).status_code == 204
    assert client.delete(path, headers=admin_headers).status_code == 404
    actions = [e.action for e in audit_events(engine_of(app)) if e.entity_type == "assignment_rule"]
    assert actions == [
        "assignment_rule.created",
        "assignment_rule.updated",
        "assignment_rule.deleted",
    ]
    # Availability and maxOpen are the administrator's to set, and checked.
    assert (
        client.patch(
            f"/api/users/{reader}", json={"available": None}, headers=admin_headers
        ).status_code
        == 422
    )
    assert (
        client.patch(
            f"/api/users/{reader}", json={"maxOpen": -1}, headers=admin_headers
        ).status_code
        == 422
    )
    assert (
        client.patch(
            f"/api/users/{reader}", json={"available": False}, headers=reader_h
        ).status_code
        == 403
    )
