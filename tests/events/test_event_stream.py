"""GET /api/events against the sidecar on a real socket: who may open it, what each caller is
told of (care scope), and resuming with Last-Event-ID."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.accounts.models import Role

from event_helpers import LiveApp, event_rows, newest_event_id
from finding_helpers import raise_finding
from reporting import ordered_study, sign, write_report
from sse_reader import SseEvent, SseReader

_orders = iter(range(1, 10_000))


def _order(live: LiveApp, headers: dict[str, str], patient: str, provider: str) -> dict[str, Any]:
    answer = live.http.post(
        "/api/imaging-orders",
        json={
            "patientId": patient,
            "issuerOfPatientId": "HOSP",
            "modality": "CT",
            "procedureDescription": "CT head",
            "placerOrderNumber": f"EV-{next(_orders)}",
            "providerId": provider,
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    order: dict[str, Any] = answer.json()
    return order


def _is(kind: str, entity_id: int, action: str | None = None) -> Any:
    def match(event: SseEvent) -> bool:
        data = event.json
        return (
            event.event == kind
            and data["id"] == entity_id
            and (action is None or data["action"] == action)
        )

    return match


@pytest.mark.one_database
def test_no_credentials_and_forged_cookie_are_refused(live: LiveApp) -> None:
    refused = SseReader.open(f"{live.url}/api/events")
    assert refused.status == 401
    assert "authentication required" in refused.body()
    forged_cookie = {"Cookie": "viewer_session=eyJhbGciOi.forged.x"}
    forged = SseReader.open(f"{live.url}/api/events", forged_cookie)
    assert forged.status == 401
    assert "invalid or expired" in forged.body()
    integration = live.user("events-integration", Role.INTEGRATION)
    assert SseReader.open(f"{live.url}/api/events", integration).status == 403


@pytest.mark.one_database
def test_a_bad_last_event_id_is_a_clear_error(live: LiveApp, admin: dict[str, str]) -> None:
    answer = SseReader.open(f"{live.url}/api/events", {**admin, "Last-Event-ID": "x1"})
    assert answer.status == 422
    assert "Last-Event-ID" in answer.body()


def test_the_session_cookie_opens_the_stream_and_an_order_is_announced(
    live: LiveApp, admin: dict[str, str]
) -> None:
    token = admin["Authorization"].removeprefix("Bearer ")
    reader = live.stream({"Cookie": f"viewer_session={token}"})
    assert reader.headers["content-type"].startswith("text/event-stream")
    assert reader.headers["cache-control"] == "no-cache"
    assert reader.headers["x-accel-buffering"] == "no"
    assert reader.retry == 2000
    order = _order(live, admin, "EV-PAT-1", "DR-OTHER")
    event = reader.until(_is("order", order["id"]))[-1]
    assert event.json == {"kind": "order", "action": "created", "id": order["id"], "studyId": None}
    assert int(event.id or 0) == newest_event_id(live.engine)
    assert "EV-PAT-1" not in event.data  # ids only
    reader.close()


def test_reports_findings_and_claims_are_announced(live: LiveApp, admin: dict[str, str]) -> None:
    radiologist = live.user("events-radiologist", Role.RADIOLOGIST)
    reader = live.stream(radiologist)
    study_id, _ = ordered_study(live.app, live.http, admin, patient_id="EV-PAT-2")  # type: ignore[arg-type]
    reader.until(_is("study", study_id, "created"))
    claimed = live.http.post(f"/api/studies/{study_id}/claim", headers=radiologist)
    assert claimed.status_code == 200, claimed.text
    reader.until(_is("study", study_id, "changed"))
    report = write_report(live.http, radiologist, study_id)  # type: ignore[arg-type]
    created = reader.until(_is("report", report["id"], "created"))[-1]
    assert created.json["studyId"] == study_id
    sign(live.http, radiologist, report["id"])  # type: ignore[arg-type]
    reader.until(_is("report", report["id"], "changed"))
    finding = raise_finding(live.http, radiologist, study_id)  # type: ignore[arg-type]
    raised = reader.until(_is("finding", finding["id"], "created"))[-1]
    assert raised.json["studyId"] == study_id
    reader.close()


def test_a_physician_is_told_only_of_the_patients_they_care_for(
    live: LiveApp, admin: dict[str, str]
) -> None:
    physician = live.user("events-physician", Role.PHYSICIAN, provider_id="DR-EV-1")
    reader = live.stream(physician)
    other = _order(live, admin, "EV-PAT-OTHER", "DR-SOMEONE-ELSE")
    theirs = _order(live, admin, "EV-PAT-THEIRS", "DR-EV-1")
    seen = reader.until(_is("order", theirs["id"]))
    assert [event.json["id"] for event in seen] == [theirs["id"]]
    # A later change of the other patient's order stays unknown to them too.
    changed = live.http.patch(
        f"/api/imaging-orders/{other['id']}", json={"clinicalIndication": "x"}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    assert event_rows(live.engine)[-1].entity_id == other["id"]
    again = live.http.patch(
        f"/api/imaging-orders/{theirs['id']}", json={"clinicalIndication": "y"}, headers=admin
    )
    assert again.status_code == 200, again.text
    seen = reader.until(_is("order", theirs["id"], "changed"))
    assert [event.json["id"] for event in seen] == [theirs["id"]]
    reader.close()


def test_last_event_id_resumes_with_exactly_the_missed_events(
    live: LiveApp, admin: dict[str, str]
) -> None:
    reader = live.stream(admin)
    first = _order(live, admin, "EV-PAT-3", "DR-A")
    last_seen = int(reader.until(_is("order", first["id"]))[-1].id or 0)
    reader.close()
    missed = [_order(live, admin, f"EV-PAT-R{n}", "DR-A")["id"] for n in range(3)]
    expected = [row.id for row in event_rows(live.engine, after=last_seen)]
    resumed = live.stream(admin, last_id=last_seen)
    got = [resumed.next() for _ in expected]
    assert [int(event.id or 0) for event in got] == expected
    assert [event.json["id"] for event in got if event.event == "order"] == missed
    assert resumed.quiet_for(1.0) == []
    by_query = SseReader.open(f"{live.url}/api/events?lastEventId={last_seen}", admin).wait_ready()
    assert [int(by_query.next().id or 0) for _ in expected] == expected
    resumed.close()
    by_query.close()
