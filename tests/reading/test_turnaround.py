"""Turnaround and workload figures (issue 14, item 5) from known timestamps: the steps of each
study are set to the minute, the clock is injected, and the figures are checked to the minute;
the CSV parses back to the same figures."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.orders.models import ImagingOrder
from sidecar.reports.models import RadiologyReport, ReportRevision
from sidecar.studies.models import Study

from finding_helpers import T0, FakeClock
from reading_helpers import radiologist, ready_study
from reporting import SECTIONS
from testapp import engine_of

Headers = dict[str, str]
URL = "/api/analytics/turnaround"


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def set_times(
    app: FastAPI,
    study_id: int,
    *,
    ordered: float,
    preliminary: float | None = None,
    final: float | None = None,
) -> None:
    """The study's order, draft and first signature at these minutes after T0."""
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None and study.order_id is not None
        order = session.get(ImagingOrder, study.order_id)
        assert order is not None
        order.created_at = minutes(ordered)
        session.add(order)
        report = session.exec(
            select(RadiologyReport).where(RadiologyReport.study_id == study_id)
        ).first()
        if report is not None:
            assert preliminary is not None
            report.created_at = minutes(preliminary)
            session.add(report)
            revision = session.exec(
                select(ReportRevision).where(ReportRevision.report_id == report.id)
            ).first()
            if revision is not None:
                assert final is not None
                revision.signed_at = minutes(final)
                session.add(revision)
        session.commit()


def report(client: TestClient, headers: Headers, study_id: int, *, sign: bool) -> None:
    created = client.post("/api/reports", json={"studyId": study_id, **SECTIONS}, headers=headers)
    assert created.status_code == 201, created.text
    if sign:
        signed = client.post(f"/api/reports/{created.json()['id']}/sign", headers=headers)
        assert signed.status_code == 200, signed.text


@pytest.fixture
def department(
    app: FastAPI, client: TestClient, clock: FakeClock, technologist: Headers
) -> dict[str, Any]:
    """Four studies with known timelines (minutes from T0), seen at T0 + 5 h:

    A  STAT CT     ordered -30, images 0,  draft 20, signed 40 (dr.a)   within its 60 min
    B  STAT CT     ordered -10, images 10, draft 70, signed 100 (dr.b)  90 min: late
    C  ROUTINE MR  ordered -60, images 0,  unread, due in 24 h           not yet counted
    D  URGENT CT   ordered -15, images 0,  unread (dr.c holds it), due at 4 h: a miss
    """
    a_id, a = radiologist(app, client, "dr.a")
    b_id, b = radiologist(app, client, "dr.b")
    c_id, c = radiologist(app, client, "dr.c")
    study_a = ready_study(app, client, technologist, now=minutes(0), priority="STAT")
    study_b = ready_study(
        app, client, technologist, now=minutes(10), priority="STAT", patient_id="P-2"
    )
    study_c = ready_study(
        app,
        client,
        technologist,
        now=minutes(0),
        modality="MR",
        body_part="KNEE",
        procedure_code="MRKNEE",
        patient_id="P-3",
    )
    study_d = ready_study(
        app, client, technologist, now=minutes(0), priority="URGENT", patient_id="P-4"
    )
    report(client, a, study_a, sign=True)
    report(client, b, study_b, sign=True)
    assert client.post(f"/api/studies/{study_d}/claim", headers=c).status_code == 200
    set_times(app, study_a, ordered=-30, preliminary=20, final=40)
    set_times(app, study_b, ordered=-10, preliminary=70, final=100)
    set_times(app, study_c, ordered=-60)
    set_times(app, study_d, ordered=-15)
    clock.now = minutes(300)
    return {"ids": (a_id, b_id, c_id), "headers": (a, b, c)}


def by_group(client: TestClient, headers: Headers, **params: Any) -> dict[str, Any]:
    response = client.get(URL, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return {g["group"]: g for g in response.json()["groups"]}


def figures(group: dict[str, Any], name: str) -> tuple[int, float | None, float | None]:
    return group[name]["count"], group[name]["p50"], group[name]["p90"]


def test_turnaround_per_priority_to_the_minute(
    client: TestClient, department: dict[str, Any], admin_headers: Headers
) -> None:
    groups = by_group(client, admin_headers, groupBy="priority")
    assert sorted(groups) == ["ROUTINE", "STAT", "URGENT"]
    stat = groups["STAT"]
    assert stat["count"] == 2
    assert figures(stat, "orderToImages") == (2, 20.0, 30.0)  # B 20, A 30
    assert figures(stat, "imagesToPreliminary") == (2, 20.0, 60.0)
    assert figures(stat, "imagesToFinal") == (2, 40.0, 90.0)
    assert figures(stat, "orderToFinal") == (2, 70.0, 110.0)
    assert (stat["withinTarget"], stat["targetCounted"], stat["withinTargetShare"]) == (1, 2, 0.5)
    urgent = groups["URGENT"]
    assert figures(urgent, "orderToImages") == (1, 15.0, 15.0)
    assert figures(urgent, "imagesToFinal") == (0, None, None)
    # Unread past its due time: a miss already.
    assert (urgent["withinTarget"], urgent["targetCounted"], urgent["withinTargetShare"]) == (
        0,
        1,
        0.0,
    )
    routine = groups["ROUTINE"]
    assert (routine["count"], routine["targetCounted"], routine["withinTargetShare"]) == (
        1,
        0,
        None,
    )


def test_other_groupings_windows_and_csv(
    client: TestClient, department: dict[str, Any], admin_headers: Headers
) -> None:
    a = department["headers"][0]
    modality = by_group(client, a, groupBy="modality")
    assert {k: v["count"] for k, v in modality.items()} == {"CT": 3, "MR": 1}
    readers = by_group(client, a, groupBy="radiologist")
    assert {k: v["count"] for k, v in readers.items()} == {
        "dr.a": 1,
        "dr.b": 1,
        "dr.c": 1,
        "unassigned": 1,
    }
    assert figures(readers["dr.b"], "imagesToFinal") == (1, 90.0, 90.0)
    days = by_group(client, a, groupBy="day")
    assert {k: v["count"] for k, v in days.items()} == {"2026-11-23": 4}
    # Only B's images were complete after 08:05.
    late = by_group(
        client,
        a,
        groupBy="priority",
        **{"from": "2026-11-23T08:05:00Z", "to": "2026-11-23T09:00:00Z"},
    )
    assert {k: v["count"] for k, v in late.items()} == {"STAT": 1}
    assert by_group(client, a, **{"to": "2026-11-23T07:00:00Z"}) == {}

    response = client.get(URL, params={"groupBy": "priority", "format": "csv"}, headers=a)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = {row["group"]: row for row in csv.DictReader(io.StringIO(response.text))}
    assert sorted(rows) == ["ROUTINE", "STAT", "URGENT"]
    stat = rows["STAT"]
    assert (
        stat["count"],
        stat["images_to_final_p50_minutes"],
        stat["images_to_final_p90_minutes"],
    ) == ("2", "40.0", "90.0")
    assert (stat["order_to_final_p90_minutes"], stat["within_target_share"]) == ("110.0", "0.5")
    assert rows["ROUTINE"]["within_target_share"] == ""


def test_workload_per_radiologist(
    client: TestClient, department: dict[str, Any], admin_headers: Headers
) -> None:
    a_id, b_id, c_id = department["ids"]
    response = client.get("/api/analytics/workload", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"radiologistId": a_id, "name": "dr.a", "read": 1, "open": 0, "overdue": 0},
        {"radiologistId": b_id, "name": "dr.b", "read": 1, "open": 0, "overdue": 0},
        {"radiologistId": c_id, "name": "dr.c", "read": 0, "open": 1, "overdue": 1},
    ]
    window = client.get(
        "/api/analytics/workload",
        params={"from": "2026-11-23T09:00:00Z", "to": "2026-11-23T12:00:00Z"},
        headers=admin_headers,
    ).json()
    assert [(w["name"], w["read"]) for w in window] == [("dr.a", 0), ("dr.b", 1), ("dr.c", 0)]


def test_analytics_are_for_administrators_and_radiologists_and_refuse_bad_input(
    client: TestClient,
    headers_for: Callable[[Role], Headers],
    admin_headers: Headers,
) -> None:
    for role in (Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION):
        headers = headers_for(role)
        assert client.get(URL, headers=headers).status_code == 403
        assert client.get("/api/analytics/workload", headers=headers).status_code == 403
    assert client.get(URL).status_code == 401
    for bad in (
        {"groupBy": "weekday"},
        {"format": "pdf"},
        {"from": "yesterday"},
        {"from": "2026-11-23T08:00:00"},  # no offset: which zone?
    ):
        assert client.get(URL, params=bad, headers=admin_headers).status_code == 422, bad
    backwards = client.get(
        URL,
        params={"from": "2026-11-24T00:00:00Z", "to": "2026-11-23T00:00:00Z"},
        headers=admin_headers,
    )
    assert backwards.status_code == 400
    assert "from must be before to" in backwards.json()["error"]["message"]
    empty = client.get(URL, headers=admin_headers).json()
    assert (empty["groupBy"], empty["groups"]) == ("priority", [])
