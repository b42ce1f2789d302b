"""/app/analytics: the API's turnaround, workload, waiting and critical finding figures for the
period the page names, drawn as SVG with the same numbers in tables; for the API's roles."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.main import create_app

from finding_helpers import FakeClock, raise_finding
from page_session import HTML
from reading_helpers import radiologist, ready_study
from reporting import SECTIONS

Headers = dict[str, str]
PERIODS = ("today", "7d", "30d")
TURNAROUND_TABLES = {"priority": "turnaround-priority", "modality": "turnaround-modality"}
TURNAROUND_TABLES["day"] = "turnaround-day"


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


@pytest.fixture
def department(
    client: TestClient, app: FastAPI, clock: FakeClock, technologist: Headers
) -> dict[str, Any]:
    """Three studies ready two hours ago: a STAT CT signed by dr.a (with a critical finding), a
    ROUTINE MR signed by dr.b, an URGENT CT dr.b holds; seen a minute from now."""
    clock.now = utcnow() - timedelta(hours=2)
    _, a = radiologist(app, client, "dr.a")
    _, b = radiologist(app, client, "dr.b")
    stat = ready_study(app, client, technologist, now=clock.now, priority="STAT")
    routine = ready_study(
        app,
        client,
        technologist,
        now=clock.now + timedelta(minutes=10),
        modality="MR",
        body_part="KNEE",
        procedure_code="MRKNEE",
        patient_id="P-2",
    )
    urgent = ready_study(
        app, client, technologist, now=clock.now, priority="URGENT", patient_id="P-3"
    )
    for study_id, headers in ((stat, a), (routine, b)):
        created = client.post(
            "/api/reports", json={"studyId": study_id, **SECTIONS}, headers=headers
        )
        assert created.status_code == 201, created.text
        signed = client.post(f"/api/reports/{created.json()['id']}/sign", headers=headers)
        assert signed.status_code == 200, signed.text
    assert client.post(f"/api/studies/{urgent}/claim", headers=b).status_code == 200
    raise_finding(client, a, stat)
    clock.now = utcnow() + timedelta(minutes=1)
    return {"a": a, "b": b}


def rows_of(page: str, table_id: str) -> dict[str, list[str]]:
    """A table's rows by their data-group, each as the <data value>s of its cells."""
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return {
        group: re.findall(r'<data value="([^"]*)">', row)
        for group, row in re.findall(r'<tr data-group="([^"]+)">(.*?)</tr>', table, re.S)
    }


def cell(value: object) -> str:
    return "" if value is None else str(value)


def window_of(page: str) -> dict[str, str]:
    start, end = re.findall(r'<time datetime="([^"]+)">', page)[:2]
    return {"from": start, "to": end}


def test_the_page_shows_the_apis_figures_for_each_period(
    client: TestClient,
    department: dict[str, Any],
    logged_in: Callable[[Role], TestClient],
    admin_headers: Headers,
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    for period in PERIODS:
        page = client.get("/app/analytics", params={"period": period})
        assert page.status_code == 200, page.text
        assert re.search(rf'<option value="{period}" selected>', page.text)
        window = window_of(page.text)
        for group_by, table_id in TURNAROUND_TABLES.items():
            api = client.get(
                "/api/analytics/turnaround",
                params={**window, "groupBy": group_by},
                headers=admin_headers,
            )
            assert api.status_code == 200, api.text
            expected = {
                g["group"]: [
                    cell(g["count"]),
                    cell(g["imagesToFinal"]["count"]),
                    cell(g["imagesToFinal"]["p50"]),
                    cell(g["imagesToFinal"]["p90"]),
                    cell(g["withinTargetShare"]),
                ]
                for g in api.json()["groups"]
            }
            assert rows_of(page.text, table_id) == expected, (period, group_by)
        workload = client.get("/api/analytics/workload", params=window, headers=admin_headers)
        assert rows_of(page.text, "workload") == {
            str(w["radiologistId"]): [str(w["read"]), str(w["open"]), str(w["overdue"])]
            for w in workload.json()
        }
        metrics = client.get(
            "/api/critical-findings/metrics",
            params={"since": window["from"]},
            headers=admin_headers,
        )
        assert rows_of(page.text, "findings") == {
            s["severity"]: [
                cell(s[name])
                for name in (
                    "count",
                    "acknowledged",
                    "pending",
                    "overdue",
                    "acknowledgedLate",
                    "medianMinutesToAcknowledge",
                    "p90MinutesToAcknowledge",
                )
            ]
            for s in metrics.json()["severities"]
        }
        for name, params in (("all", {}), ("overdue", {"overdue": "true"})):
            total = client.get(
                "/api/reading-worklist", params={"limit": 1, **params}, headers=admin_headers
            ).json()["total"]
            assert re.search(rf'id="waiting-{name}"><data value="{total}">', page.text), name
    # The seeded figures are there (not only equal to an empty API answer).
    week = client.get("/app/analytics", params={"period": "7d"}).text
    by_priority = rows_of(week, "turnaround-priority")
    assert by_priority["STAT"][:2] == ["1", "1"] and by_priority["URGENT"][:2] == ["1", "0"]
    assert rows_of(week, "turnaround-modality")["MR"][:2] == ["1", "1"]
    # dr.a and dr.b read one each, dr.b holds one; the page's own radiologist, nothing.
    assert sorted(tuple(v) for v in rows_of(week, "workload").values()) == [
        ("0", "0", "0"),
        ("1", "0", "0"),
        ("1", "1", "0"),
    ]
    assert rows_of(week, "findings")["CRITICAL"][:3] == ["1", "0", "1"]


def test_charts_have_an_accessible_name_and_their_numbers_in_tables(
    client: TestClient, department: dict[str, Any], logged_in: Callable[[Role], TestClient]
) -> None:
    page = logged_in(Role.ADMIN).get("/app/analytics").text
    charts = re.findall(r"<svg\b([^>]*)>(.*?)</svg>", page, re.S)
    assert len(charts) == 4
    for attributes, body in charts:
        label = re.search(r'aria-label="([^"]+)"', attributes)
        assert label and 'role="img"' in attributes
        assert f"<title>{label[1]}</title>" in body
        assert re.search(r"<desc>[^<]+</desc>", body)
    workload_chart = next(body for attrs, body in charts if "Studies read per" in attrs)
    assert "dr.a: 1" in workload_chart and "dr.b: 1" in workload_chart
    assert re.search(r"<details>\s*<summary>[^<]+</summary>\s*<div class=\"table-wrap\"", page)
    for table in re.findall(r"<table\b.*?</table>", page, re.S):
        assert "<caption>" in table and '<th scope="col"' in table
    for script in re.findall(r"<script\b[^>]*>", page):
        assert re.search(r'\bsrc="/app/static/[a-z.]+"', script), script
    assert re.search(r"\son[a-z]+=", page) is None


@pytest.mark.one_database
def test_analytics_is_for_the_apis_roles_and_periods_are_enumerated(
    logged_in: Callable[[Role], TestClient],
) -> None:
    for role in (Role.TECHNOLOGIST, Role.PHYSICIAN):
        client = logged_in(role)
        refused = client.get("/app/analytics")
        assert refused.status_code == 403
        assert "this page is for the roles: admin, radiologist" in refused.text
    client = logged_in(Role.RADIOLOGIST)
    empty = client.get("/app/analytics")
    assert empty.status_code == 200
    assert "nothing in this period" in empty.text
    assert client.get("/app/analytics", params={"period": "yesterday"}).status_code == 400
    client.cookies.clear()
    assert client.get("/app/analytics", headers=HTML).status_code == 401
