"""Claims: a performer silent for AI_CLAIM_TIMEOUT_MINUTES loses its work item to the next
analyzer (the leased job, driven here with a clock the test moves), a sign of life keeps it, and
two changes at once (two claims, a claim's release and its performer's update) never both win."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, select

from sidecar.accounts.models import User
from sidecar.analyses import workitem_states
from sidecar.analyses.claim_timeout import ClaimTimeout, release
from sidecar.analyses.models import Analysis, AnalysisTask, Workitem, WorkitemState
from sidecar.core.audit import AuditEvent
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.studies.models import Study

from finding_helpers import T0, FakeClock
from testapp import engine_of, login, service_of
from workitem_rows import ANALYZER_PASSWORD, ScheduledItem, analyzer_account, schedule, study_row

STUDY_UID = "1.2.826.0.1.3680043.8.498.19201"
TXN, LATE_TXN = "2.25.1920001", "2.25.1920002"
JSON = {"Content-Type": "application/dicom+json"}


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return create_app(settings.model_copy(update={"ai_claim_timeout_minutes": 30}), clock=clock)


@pytest.fixture
def item(app: FastAPI) -> ScheduledItem:
    engine = engine_of(app)
    study_row(engine, STUDY_UID)
    for name in ("ai-one", "ai-two"):
        analyzer_account(engine, name)
    return schedule(engine, STUDY_UID)


def _claim(client: TestClient, uid: str, headers: dict[str, str], txn: str) -> int:
    body = {
        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00081195": {"vr": "UI", "Value": [txn]},
    }
    answer = client.put(f"/dicom-web/workitems/{uid}/state", json=body, headers=headers)
    return int(answer.status_code)


def _progress(client: TestClient, uid: str, headers: dict[str, str], txn: str) -> int:
    body = {"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [10]}}]}}
    answer = client.post(f"/dicom-web/workitems/{uid}?{txn}", json=body, headers=headers)
    return int(answer.status_code)


def _rows(app: FastAPI, item: ScheduledItem) -> tuple[Workitem, str, str]:
    with Session(engine_of(app)) as session:
        workitem = session.get(Workitem, item.workitem_id)
        task = session.get(AnalysisTask, item.task_id)
        analysis = session.get(Analysis, item.analysis_id)
        assert workitem and task and analysis
        session.expunge(workitem)
        return workitem, task.status.value, analysis.status.value


def test_a_silent_claim_is_released_and_a_sign_of_life_keeps_it(
    app: FastAPI, client: TestClient, clock: FakeClock, item: ScheduledItem
) -> None:
    first = {**login(client, "ai-one", ANALYZER_PASSWORD), **JSON}
    second = {**login(client, "ai-two", ANALYZER_PASSWORD), **JSON}
    timeout = service_of(app, ClaimTimeout)
    assert timeout.run_once() is None  # nothing held
    assert _claim(client, item.uid, first, TXN) == 200
    clock.advance(minutes=29)
    due = timeout.run_once()
    assert due is not None and 0 < due <= 60
    assert _progress(client, item.uid, first, TXN) == 200  # seen at T0 + 29 min
    clock.advance(minutes=16)  # 45 min after the claim, 16 after the update
    timeout.run_once()
    workitem, task, analysis = _rows(app, item)
    assert workitem.state is WorkitemState.IN_PROGRESS and workitem.transaction_uid == TXN
    clock.advance(minutes=15)  # 31 min of silence
    assert timeout.run_once() is None
    workitem, task, analysis = _rows(app, item)
    assert workitem.state is WorkitemState.SCHEDULED
    assert (workitem.transaction_uid, workitem.performer_id, workitem.performer_seen_at) == (
        None,
        None,
        None,
    )
    assert workitem.dataset["00741000"]["Value"] == ["SCHEDULED"]
    assert "00741004" not in str(workitem.dataset)  # the silent performer's progress is gone
    assert (task, analysis) == ("SCHEDULED", "SCHEDULED")
    # The silent performer's late requests are refused; the next analyzer takes it.
    assert _progress(client, item.uid, first, TXN) == 409
    assert _claim(client, item.uid, second, LATE_TXN) == 200
    assert _rows(app, item)[1:] == ("IN_PROGRESS", "IN_PROGRESS")
    with Session(engine_of(app)) as session:
        released = session.exec(
            select(AuditEvent).where(AuditEvent.action == "workitem.released")
        ).all()
    assert [(event.entity_id, event.actor) for event in released] == [
        (str(item.workitem_id), "system:claim-timeout")
    ]
    assert clock.now > T0


def test_of_two_claims_at_once_one_wins(app: FastAPI, item: ScheduledItem) -> None:
    engine = engine_of(app)
    with Session(engine) as first, Session(engine) as second:
        users = {u.username: u for u in first.exec(select(User)).all()}
        one = first.exec(select(Workitem).where(Workitem.id == item.workitem_id)).one()
        two = second.exec(select(Workitem).where(Workitem.id == item.workitem_id)).one()
        other = second.get(User, users["ai-two"].id)
        assert other is not None
        workitem_states.claim(first, one, users["ai-one"], TXN, T0)
        with pytest.raises(workitem_states.WorkitemRefusal) as lost:
            workitem_states.claim(second, two, other, LATE_TXN, T0)
    assert lost.value.status_code == 409
    assert "claimed it first" in lost.value.message
    workitem, task, _ = _rows(app, item)
    assert workitem.transaction_uid == TXN and task == "IN_PROGRESS"


def test_a_release_racing_the_performer_leaves_the_claim_alone(
    app: FastAPI, client: TestClient, item: ScheduledItem
) -> None:
    headers = {**login(client, "ai-one", ANALYZER_PASSWORD), **JSON}
    assert _claim(client, item.uid, headers, TXN) == 200
    engine = engine_of(app)
    with Session(engine) as session:
        stale = session.exec(select(Workitem).where(Workitem.id == item.workitem_id)).one()
        assert _progress(client, item.uid, headers, TXN) == 200  # the performer, meanwhile
        with pytest.raises(StaleDataError):
            release(session, stale, T0 + timedelta(hours=1), "system:claim-timeout")
    assert _rows(app, item)[0].transaction_uid == TXN


def test_a_work_item_whose_study_images_were_deleted_is_not_claimed(
    app: FastAPI, client: TestClient, item: ScheduledItem, clock: FakeClock
) -> None:
    """The study's images deleted after its work item was scheduled: an analyzer that claimed
    it would hold a study it cannot read and never complete. The claim is refused (409, saying
    why) and the work item and its task end, so no analyzer is offered it again."""
    engine = engine_of(app)
    with Session(engine) as session:
        workitem = session.get(Workitem, item.workitem_id)
        assert workitem is not None
        study = session.get(Study, workitem.study_id)
        assert study is not None
        study.images_deleted_at = clock()
        session.add(study)
        session.commit()
    headers = {**login(client, "ai-one", ANALYZER_PASSWORD), **JSON}
    assert _claim(client, item.uid, headers, TXN) == 409
    assert client.get("/dicom-web/workitems", headers=headers).status_code == 204
    workitem, task, analysis = _rows(app, item)
    assert workitem.state is WorkitemState.CANCELED
    assert workitem.performer_id is None and workitem.transaction_uid is None
    assert (task, analysis) == ("CANCELED", "CANCELED")
