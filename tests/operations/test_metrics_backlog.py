"""The backlogs GET /metrics reads from the database at each scrape, on the app's clock: the
HIS outbox's depth and oldest age, critical findings past their deadline, the reading worklist
waiting and overdue by priority; and background jobs whose rounds raise, counted by job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.core.background import BackgroundWorker
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus

from finding_helpers import FakeClock, raise_finding
from metrics_scrape import Samples, moved, parse, value
from reading_helpers import radiologist, ready_study
from stack import wait_for
from testapp import engine_of


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings, clock=clock)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def test_the_his_outbox_depth_and_its_oldest_message_age(
    app: FastAPI, client: TestClient, clock: FakeClock
) -> None:
    waiting = {"pending": [20, 5], "failed": [60]}  # minutes before now
    with Session(engine_of(app)) as session:
        for status, ages in waiting.items():
            for n, minutes in enumerate(ages):
                session.add(
                    Hl7Message(
                        direction=Hl7Direction.OUTBOUND,
                        control_id=f"OUT-{status}-{n}",
                        message_type="ORU^R01",
                        sender="RIS^RADIOLOGY",
                        status=Hl7MessageStatus(status),
                        raw="MSH|^~\\&|RIS|RADIOLOGY\r",
                        received_at=clock.now - timedelta(minutes=minutes),
                    )
                )
        session.commit()
    samples = scrape(client)
    depth = "sidecar_hl7_outbox_depth"
    assert value(samples, depth, scope="cluster", status="pending") == 2
    assert value(samples, depth, scope="cluster", status="failed") == 1
    assert value(samples, "sidecar_hl7_outbox_oldest_age_seconds", scope="cluster") == 20 * 60
    clock.advance(minutes=10)
    later = scrape(client)
    assert value(later, "sidecar_hl7_outbox_oldest_age_seconds", scope="cluster") == 30 * 60


def test_findings_past_their_deadline_and_studies_past_their_reading_target(
    app: FastAPI, client: TestClient, clock: FakeClock, admin_headers: dict[str, str]
) -> None:
    study_id = ready_study(app, client, admin_headers, now=clock.now, priority="STAT")
    _, reader = radiologist(app, client, "dr-backlog")
    raise_finding(client, reader, study_id, severity="CRITICAL")  # 30 minutes to acknowledge
    fresh = scrape(client)
    cluster = {"scope": "cluster"}
    assert (
        value(fresh, "sidecar_critical_findings_unacknowledged", **cluster, severity="CRITICAL")
        == 1
    )
    assert value(fresh, "sidecar_critical_findings_overdue", **cluster, severity="CRITICAL") == 0
    assert value(fresh, "sidecar_reading_worklist_waiting", **cluster, priority="STAT") == 1
    assert value(fresh, "sidecar_reading_worklist_overdue", **cluster, priority="STAT") == 0

    clock.advance(minutes=61)  # past the finding's 30 minutes and STAT's 60
    late = scrape(client)
    assert value(late, "sidecar_critical_findings_overdue", **cluster, severity="CRITICAL") == 1
    assert value(late, "sidecar_critical_findings_overdue", **cluster, severity="HIGH") == 0
    assert value(late, "sidecar_reading_worklist_overdue", **cluster, priority="STAT") == 1
    assert value(late, "sidecar_reading_worklist_overdue", **cluster, priority="ROUTINE") == 0


class _Failing(BackgroundWorker):
    def run_once(self) -> float | None:
        raise RuntimeError("the database is down")


def test_a_background_job_whose_round_raises_is_counted_by_name(client: TestClient) -> None:
    before = scrape(client)
    worker = _Failing("metrics-test-job", after_crash=600.0)  # one failure, then a long wait
    worker.start()
    try:
        failures = "sidecar_background_job_failures_total"
        wait_for(
            lambda: moved(before, scrape(client), failures, job="metrics-test-job") >= 1,
            timeout=10,
            what="the failed round counted",
        )
        assert moved(before, scrape(client), failures, job="metrics-test-job") == 1
    finally:
        worker.stop()
