"""UPS-RS at /dicom-web/workitems on the sidecar's own front, below the end-to-end module: search,
retrieve, claim, update, cancel and cancel requests, who may do each, and what each does to the
analysis the work item carries. Work items are made in rows as the analyses service makes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.analyses.models import Analysis, AnalysisPriority, AnalysisTask, Workitem
from sidecar.analyses.workitems import UPS_PUSH_SOP_CLASS

from testapp import engine_of, login
from workitem_rows import ANALYZER_PASSWORD, ScheduledItem, analyzer_account, schedule, study_row

STUDY_UID = "1.2.826.0.1.3680043.8.498.19001"
OTHER_STUDY_UID = "1.2.826.0.1.3680043.8.498.19002"
TXN = "2.25.1000001"
OTHER_TXN = "2.25.1000002"
JSON = {"Content-Type": "application/dicom+json"}


@pytest.fixture
def analyzer(app: FastAPI, client: TestClient) -> Callable[[str], dict[str, str]]:
    def headers(username: str) -> dict[str, str]:
        analyzer_account(engine_of(app), username)
        return login(client, username, ANALYZER_PASSWORD)

    return headers


@pytest.fixture
def scheduled(app: FastAPI) -> ScheduledItem:
    engine = engine_of(app)
    study_row(engine, STUDY_UID)
    return schedule(engine, STUDY_UID)


def state_body(state: str, transaction: str | None = TXN) -> dict[str, Any]:
    body: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction is not None:
        body["00081195"] = {"vr": "UI", "Value": [transaction]}
    return body


def put_state(
    client: TestClient, uid: str, headers: dict[str, str], state: str, txn: str | None = TXN
) -> Any:
    return client.put(
        f"/dicom-web/workitems/{uid}/state",
        json=state_body(state, txn),
        headers={**headers, **JSON},
    )


def statuses(app: FastAPI, item: ScheduledItem) -> tuple[str, str, str]:
    with Session(engine_of(app)) as session:
        workitem = session.get(Workitem, item.workitem_id)
        task = session.get(AnalysisTask, item.task_id)
        analysis = session.get(Analysis, item.analysis_id)
        assert workitem and task and analysis
        return workitem.state.value, task.status.value, analysis.status.value


def test_an_analyzer_finds_the_scheduled_work_item_naming_its_study(
    client: TestClient, analyzer: Callable[[str], dict[str, str]], scheduled: ScheduledItem
) -> None:
    headers = analyzer("ai-one")
    answer = client.get(
        "/dicom-web/workitems",
        params={"ProcedureStepState": "SCHEDULED", "includefield": "all"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    [found] = answer.json()
    item = Dataset.from_json(found)
    assert item.SOPInstanceUID == scheduled.uid
    assert item.SOPClassUID == UPS_PUSH_SOP_CLASS
    assert item.ProcedureStepState == "SCHEDULED"
    assert item.ProcedureStepLabel == "ext-detector"
    source = item.InputInformationSequence[0]
    assert source.StudyInstanceUID == STUDY_UID
    assert source.RetrieveURL == f"http://testserver/dicom-web/studies/{STUDY_UID}"
    assert "00081195" not in found
    retrieved = client.get(f"/dicom-web/workitems/{scheduled.uid}", headers=headers)
    assert retrieved.status_code == 200
    assert retrieved.json() == [found]


@pytest.mark.parametrize(
    ("params", "found"),
    [
        ({"00741000": "SCHEDULED"}, True),
        ({"ProcedureStepState": "IN PROGRESS"}, False),
        ({"InputInformationSequence.StudyInstanceUID": STUDY_UID}, True),
        ({"00404021.0020000D": OTHER_STUDY_UID}, False),
        ({"StudyInstanceUID": f"{OTHER_STUDY_UID},{STUDY_UID}"}, True),
        ({"ProcedureStepLabel": "ext-*"}, True),
        ({"ProcedureStepLabel": "other"}, False),
        ({"ScheduledProcedureStepPriority": "MEDIUM"}, True),
        ({"ScheduledProcedureStepPriority": "HIGH"}, False),
        ({"PatientName": "doe^jane"}, True),
        ({"ProcedureStepLabel": ""}, True),
        ({"limit": "1", "offset": "1"}, False),
    ],
)
def test_search_matches_as_ps3_4_says(
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
    params: dict[str, str],
    found: bool,
) -> None:
    answer = client.get("/dicom-web/workitems", params=params, headers=analyzer("ai-one"))
    assert answer.status_code == (200 if found else 204), answer.text
    if found:
        assert [item["00080018"]["Value"] for item in answer.json()] == [[scheduled.uid]]
    else:
        assert answer.content == b""


@pytest.mark.parametrize(
    "params",
    [
        {"NoSuchKeyword": "x"},
        {"ProcedureStepState": "RUNNING"},
        {"limit": "-1"},
        {"limit": "100000"},
        {"offset": "x"},
        {"includefield": "NotAnAttribute"},
        {"fuzzymatching": "maybe"},
    ],
)
def test_a_search_it_cannot_do_is_refused_naming_why(
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
    params: dict[str, str],
) -> None:
    answer = client.get("/dicom-web/workitems", params=params, headers=analyzer("ai-one"))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]


def test_claim_then_a_second_claim_is_a_conflict(
    app: FastAPI,
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
) -> None:
    first, second = analyzer("ai-one"), analyzer("ai-two")
    assert statuses(app, scheduled) == ("SCHEDULED", "SCHEDULED", "SCHEDULED")
    claimed = put_state(client, scheduled.uid, first, "IN PROGRESS")
    assert claimed.status_code == 200, claimed.text
    assert statuses(app, scheduled) == ("IN PROGRESS", "IN_PROGRESS", "IN_PROGRESS")
    # Another analyzer's claim, with its own transaction UID: a conflict, with PS3.18's warning;
    # so is the performer's own second claim.
    for headers in (second, first):
        again = put_state(client, scheduled.uid, headers, "IN PROGRESS", OTHER_TXN)
        assert again.status_code == 409, again.text
        assert again.headers["Warning"].startswith("299 sidecar: ")
        assert "inconsistent with the state of the UPS Instance" in again.headers["Warning"]
    # Nor does the other analyzer see it any longer (it performs nothing of it).
    assert client.get(f"/dicom-web/workitems/{scheduled.uid}", headers=second).status_code == 404
    assert client.get("/dicom-web/workitems", headers=second).status_code == 204
    served = client.get(f"/dicom-web/workitems/{scheduled.uid}", headers=first).json()[0]
    assert served["00741000"]["Value"] == ["IN PROGRESS"]
    assert TXN not in str(served)
    # An administrator follows it, and never sees the transaction UID either.
    admin = login(client, "admin", "admin-password-for-tests")
    followed = client.get(f"/dicom-web/workitems/{scheduled.uid}", headers=admin)
    assert followed.status_code == 200 and TXN not in followed.text


def test_the_performer_updates_with_its_transaction_uid_only(
    client: TestClient, analyzer: Callable[[str], dict[str, str]], scheduled: ScheduledItem
) -> None:
    headers = {**analyzer("ai-one"), **JSON}
    assert put_state(client, scheduled.uid, headers, "IN PROGRESS").status_code == 200
    progress = {
        "00741002": {
            "vr": "SQ",
            "Value": [{"00741004": {"vr": "DS", "Value": [50]}}],
        }
    }
    url = f"/dicom-web/workitems/{scheduled.uid}"
    missing = client.post(url, json=progress, headers=headers)
    assert missing.status_code == 400
    assert "Transaction UID is missing" in missing.headers["Warning"]
    wrong = client.post(f"{url}?{OTHER_TXN}", json=progress, headers=headers)
    assert wrong.status_code == 400
    assert "Transaction UID is incorrect" in wrong.headers["Warning"]
    done = client.post(f"{url}?{TXN}", json=progress, headers=headers)
    assert done.status_code == 200, done.text
    in_body = {**progress, "00081195": {"vr": "UI", "Value": [TXN]}}
    assert client.post(url, json=[in_body], headers=headers).status_code == 200
    served = Dataset.from_json(client.get(url, headers=headers).json()[0])
    assert served.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50
    not_its = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "X^Y"}]}}
    refused = client.post(f"{url}?{TXN}", json=not_its, headers=headers)
    assert refused.status_code == 400
    assert "(0010,0010) PatientName" in refused.json()["error"]["message"]


def test_completing_without_stored_results_is_refused_saying_what_is_missing(
    app: FastAPI,
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
) -> None:
    headers = analyzer("ai-one")
    assert put_state(client, scheduled.uid, headers, "IN PROGRESS").status_code == 200
    wrong = put_state(client, scheduled.uid, headers, "COMPLETED", OTHER_TXN)
    assert wrong.status_code == 400 and "incorrect" in wrong.headers["Warning"]
    refused = put_state(client, scheduled.uid, headers, "COMPLETED")
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "(0040,4033)" in message and "STOW-RS" in message
    assert statuses(app, scheduled) == ("IN PROGRESS", "IN_PROGRESS", "IN_PROGRESS")


def test_the_performer_cancels_and_the_analysis_is_canceled(
    app: FastAPI,
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
) -> None:
    headers = analyzer("ai-one")
    assert put_state(client, scheduled.uid, headers, "CANCELED").status_code == 409  # not claimed
    assert put_state(client, scheduled.uid, headers, "IN PROGRESS").status_code == 200
    assert put_state(client, scheduled.uid, headers, "CANCELED", OTHER_TXN).status_code == 400
    canceled = put_state(client, scheduled.uid, headers, "CANCELLED")  # PS3.18's spelling too
    assert canceled.status_code == 200, canceled.text
    assert statuses(app, scheduled) == ("CANCELED", "CANCELED", "CANCELED")
    again = put_state(client, scheduled.uid, headers, "CANCELED")
    assert again.status_code == 200
    assert "already in the requested state of CANCELED" in again.headers["Warning"]
    assert put_state(client, scheduled.uid, headers, "IN PROGRESS").status_code == 409


def test_a_cancel_request_cancels_a_scheduled_item_and_asks_the_performer_of_a_claimed_one(
    app: FastAPI,
    client: TestClient,
    analyzer: Callable[[str], dict[str, str]],
    headers_for: Callable[[Role], dict[str, str]],
    scheduled: ScheduledItem,
) -> None:
    radiologist = headers_for(Role.RADIOLOGIST)
    performer = analyzer("ai-one")
    claimed = schedule(engine_of(app), STUDY_UID)
    assert put_state(client, claimed.uid, performer, "IN PROGRESS").status_code == 200
    # Another analyzer may not cancel what any analyzer may claim.
    other = client.post(
        f"/dicom-web/workitems/{scheduled.uid}/cancelrequest", headers=analyzer("ai-two")
    )
    assert other.status_code == 403
    asked = client.post(f"/dicom-web/workitems/{scheduled.uid}/cancelrequest", headers=radiologist)
    assert asked.status_code == 202, asked.text
    assert statuses(app, scheduled) == ("CANCELED", "CANCELED", "CANCELED")
    reason = {"00741238": {"vr": "LT", "Value": ["study withdrawn"]}}
    asked = client.post(
        f"/dicom-web/workitems/{claimed.uid}/cancelrequest",
        json=reason,
        headers={**radiologist, **JSON},
    )
    assert asked.status_code == 202, asked.text
    assert statuses(app, claimed)[0] == "IN PROGRESS"  # the performer decides
    served = Dataset.from_json(
        client.get(f"/dicom-web/workitems/{claimed.uid}", headers=performer).json()[0]
    )
    progress = served.ProcedureStepProgressInformationSequence[0]
    assert progress.ReasonForCancellation == "study withdrawn"
    again = client.post(f"/dicom-web/workitems/{scheduled.uid}/cancelrequest", headers=radiologist)
    assert again.status_code == 202 and "already" in again.headers["Warning"]


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION])
def test_roles_without_work_items_are_refused(
    client: TestClient,
    headers_for: Callable[[Role], dict[str, str]],
    scheduled: ScheduledItem,
    role: Role,
) -> None:
    headers = headers_for(role)
    assert client.get("/dicom-web/workitems", headers=headers).status_code == 403
    assert client.get(f"/dicom-web/workitems/{scheduled.uid}", headers=headers).status_code == 403
    assert client.get("/dicom-web/workitems").status_code == 401


def test_requesters_neither_claim_nor_create_and_subscriptions_point_to_the_stream(
    client: TestClient,
    headers_for: Callable[[Role], dict[str, str]],
    analyzer: Callable[[str], dict[str, str]],
    scheduled: ScheduledItem,
) -> None:
    radiologist = headers_for(Role.RADIOLOGIST)
    assert put_state(client, scheduled.uid, radiologist, "IN PROGRESS").status_code == 403
    created = client.post("/dicom-web/workitems", json={}, headers={**analyzer("ai-one"), **JSON})
    assert created.status_code == 405
    assert created.headers["Allow"] == "GET"
    assert "created by the sidecar" in created.json()["error"]["message"]
    for target in (
        f"/dicom-web/workitems/{scheduled.uid}/subscribers/MYAET",
        "/dicom-web/workitems/1.2.840.10008.5.1.4.34.5/subscribers/MYAET",
    ):
        answer = client.post(target, headers=radiologist)
        assert answer.status_code == 501, answer.text
        assert "/api/events" in answer.json()["error"]["message"]
        assert client.delete(target, headers=radiologist).status_code == 501


def test_the_most_urgent_come_first_a_page_at_a_time(
    app: FastAPI, client: TestClient, analyzer: Callable[[str], dict[str, str]]
) -> None:
    engine = engine_of(app)
    study_row(engine, STUDY_UID)
    low, high, medium = (
        schedule(engine, STUDY_UID, priority=priority)
        for priority in (AnalysisPriority.LOW, AnalysisPriority.HIGH, AnalysisPriority.MEDIUM)
    )
    headers = analyzer("ai-one")
    for params in ({}, {"PatientName": "DOE*"}):  # cut in the database, and after reading all
        uids = []
        for offset in range(3):
            page = client.get(
                "/dicom-web/workitems",
                params={**params, "limit": "1", "offset": str(offset)},
                headers=headers,
            )
            assert page.status_code == 200, page.text
            uids += [item["00080018"]["Value"][0] for item in page.json()]
            more = "additional results" in page.headers.get("Warning", "")
            assert more == (offset < 2)
        assert uids == [high.uid, medium.uid, low.uid]
