"""The human in the loop on the reading worklist: a critical AI finding raises its study to STAT
and to the top of the reading worklist, due for review AI_REVIEW_MINUTES later; the overdue
worker marks it overdue then and tells its reader, as for any study late for reading; the review
of its critical findings lifts the deadline. It never raises a critical finding by itself.

The clock is the test's; the overdue worker's thread is stopped and its rounds run by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.analyses.findings import Severity
from sidecar.core.settings import Settings
from sidecar.findings.models import CriticalFinding, FindingNotification
from sidecar.main import create_app
from sidecar.reading.models import StudyReading
from sidecar.reading.overdue import ReadingOverdue
from sidecar.studies.models import Study, StudyStatus

from analysis_helpers import FixedAnalyzer, complete_tasks, finding, register, request
from builders import audit_events
from finding_helpers import T0, FakeClock
from page_session import form_login
from reading_helpers import radiologist, ready_study, worklist_ids
from testapp import USER_PASSWORD, engine_of, service_of
from webhook_receiver import WebhookReceiver

Headers = dict[str, str]
REVIEW_MINUTES = 10


@pytest.fixture
def settings(settings: Settings, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "notification_service_url": receiver.url,
            "ai_review_minutes": REVIEW_MINUTES,
            "reading_escalation_contact": "RAD-LEAD",
        }
    )


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    app = create_app(settings, clock=clock)
    register(app, FixedAnalyzer())
    return app


@pytest.fixture
def overdue(app: FastAPI, client: TestClient) -> ReadingOverdue:
    worker = service_of(app, ReadingOverdue)
    worker.stop()  # the test drives it
    return worker


def reading_of(app: FastAPI, study_id: int) -> StudyReading:
    with Session(engine_of(app)) as session:
        found = session.exec(select(StudyReading).where(StudyReading.study_id == study_id)).one()
        return found


def test_a_critical_ai_finding_tops_the_worklist_and_is_overdue_after_the_review_time(
    app: FastAPI,
    client: TestClient,
    overdue: ReadingOverdue,
    clock: FakeClock,
    receiver: WebhookReceiver,
    technologist: Headers,
) -> None:
    stat = ready_study(app, client, technologist, now=T0 - timedelta(minutes=30), priority="STAT")
    urgent = ready_study(app, client, technologist, now=T0, priority="URGENT", patient_id="P-2")
    routine = ready_study(app, client, technologist, now=T0, patient_id="P-3")
    reader_id, reader = radiologist(app, client, "dr.reader")
    assert client.post(f"/api/studies/{routine}/claim", headers=reader).status_code == 200
    assert worklist_ids(client, reader) == [stat, urgent, routine]

    clock.advance(minutes=5)
    accepted = request(client, reader, routine, "test-critical")
    complete_tasks(
        app,
        accepted["analysisId"],
        [finding(), finding(Severity.MODERATE, "motion")],
        now=clock(),
    )
    review_due = T0 + timedelta(minutes=5 + REVIEW_MINUTES)
    # STAT now, and above the STAT study that was waiting already.
    assert worklist_ids(client, reader) == [routine, stat, urgent]
    item = client.get("/api/reading-worklist", headers=reader).json()["items"][0]
    assert item["priority"] == "STAT"
    assert item["aiReviewDueAt"] == review_due.isoformat().replace("+00:00", "Z")
    assert item["dueAt"] == item["aiReviewDueAt"]  # sooner than STAT's 60 minutes
    assert item["overdue"] is False
    raised = audit_events(engine_of(app), "study.ai_review_requested")
    assert [(e.actor, e.entity_id) for e in raised] == [("system:ai-analysis", str(routine))]
    assert raised[0].detail["previous_priority"] == "ROUTINE"
    assert raised[0].detail["priority"] == "STAT"
    assert raised[0].detail["analysis_id"] == accepted["analysisId"]
    assert len(raised[0].detail["finding_ids"]) == 1  # the critical one
    with Session(engine_of(app)) as session:
        assert session.exec(select(CriticalFinding)).all() == []
    # The worklist page says so on the study's row.
    assert form_login(client, "dr.reader", USER_PASSWORD, next="/app/").status_code == 303
    html = client.get("/app/worklist").text
    row = html.split(f'<tr id="study-{routine}"', 1)[1].split("</tr>", 1)[0]
    assert "Critical AI finding: review by" in row
    assert '<span class="badge badge--stat">STAT</span>' in row

    # The overdue worker wakes for the review deadline, before the STAT study's target.
    clock.advance(minutes=1)
    assert overdue.run_once() == (REVIEW_MINUTES - 1) * 60.0
    clock.advance(minutes=REVIEW_MINUTES - 2)
    overdue.run_once()
    assert reading_of(app, routine).overdue_level == 0
    clock.advance(minutes=1)
    overdue.run_once()
    assert reading_of(app, routine).overdue_level == 1
    payload = receiver.wait_for_count(1)[0]
    assert payload["event"] == "reading.overdue"
    assert payload["recipient"] == {"id": "dr.reader", "role": "assigned_radiologist"}
    assert (payload["studyId"], payload["priority"]) == (routine, "STAT")
    assert payload["dueAt"] == review_due.isoformat()
    assert worklist_ids(client, reader, overdue="true") == [routine]
    late = audit_events(engine_of(app), "study.reading_overdue")
    assert [e.entity_id for e in late] == [str(routine)]  # the STAT study is not late yet

    # Reviewed: the deadline is lifted; the study stays STAT.
    analysis = client.get(f"/api/analyses/{accepted['analysisId']}", headers=reader).json()
    critical = analysis["findings"][0]
    assert critical["severity"] == "critical"
    reviewed = client.post(
        f"/api/analyses/{accepted['analysisId']}/findings/{critical['id']}/review",
        json={"decision": "rejected", "note": "skin fold"},
        headers=reader,
    )
    assert reviewed.status_code == 200, reviewed.text
    assert reading_of(app, routine).review_due_at is None
    item = client.get("/api/reading-worklist", headers=reader).json()["items"]
    assert [(i["studyId"], i["priority"], i["aiReviewDueAt"]) for i in item] == [
        (stat, "STAT", None),
        (routine, "STAT", None),
        (urgent, "URGENT", None),
    ]
    done = audit_events(engine_of(app), "study.ai_review_done")
    assert [(e.actor, e.entity_id) for e in done] == [("dr.reader", str(routine))]
    assert reader_id


def test_the_deadline_waits_for_every_critical_finding_and_keeps_the_soonest(
    app: FastAPI, client: TestClient, clock: FakeClock, technologist: Headers
) -> None:
    study = ready_study(app, client, technologist, now=T0)
    _, reader = radiologist(app, client, "dr.reader")
    first = request(client, reader, study, "test-critical")
    complete_tasks(app, first["analysisId"], [finding(), finding(words="rib fracture")], now=T0)
    clock.advance(minutes=5)
    second = request(client, reader, study, "test-critical")
    complete_tasks(app, second["analysisId"], [finding(words="free air")], now=clock())
    assert reading_of(app, study).review_due_at == T0 + timedelta(minutes=REVIEW_MINUTES)
    raised = audit_events(engine_of(app), "study.ai_review_requested")
    assert [e.detail["previous_priority"] for e in raised] == ["ROUTINE", "STAT"]

    findings = [
        (analysis["analysisId"], f["id"])
        for analysis in (first, second)
        for f in client.get(f"/api/analyses/{analysis['analysisId']}", headers=reader).json()[
            "findings"
        ]
    ]
    for analysis_id, finding_id in findings:
        assert reading_of(app, study).review_due_at is not None
        answer = client.post(
            f"/api/analyses/{analysis_id}/findings/{finding_id}/review",
            json={"decision": "accepted"},
            headers=reader,
        )
        assert answer.status_code == 200, answer.text
    assert reading_of(app, study).review_due_at is None


def test_a_study_already_read_is_not_raised(
    app: FastAPI, client: TestClient, clock: FakeClock, technologist: Headers
) -> None:
    study_id = ready_study(app, client, technologist, now=T0)
    _, reader = radiologist(app, client, "dr.reader")
    accepted = request(client, reader, study_id, "test-critical")
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.status = StudyStatus.FINAL
        session.add(study)
        session.commit()
    complete_tasks(app, accepted["analysisId"], [finding()], now=T0)
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None and study.priority == "ROUTINE"
        assert session.exec(select(FindingNotification)).all() == []
    assert reading_of(app, study_id).review_due_at is None
    assert audit_events(engine_of(app), "study.ai_review_requested") == []
    # The finding waits in its analysis for review all the same.
    analysis = client.get(f"/api/analyses/{accepted['analysisId']}", headers=reader).json()
    assert [f["severity"] for f in analysis["findings"]] == ["critical"]
