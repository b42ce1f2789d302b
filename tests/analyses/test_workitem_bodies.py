"""Hostile and mistaken UPS-RS request bodies: each refused with a status and a message that names
what is wrong (the attribute, when one is), and the work item left as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlmodel import Session

from sidecar.analyses.dicom_json import MAX_BODY_BYTES
from sidecar.analyses.models import Workitem, WorkitemState

from testapp import engine_of, login
from workitem_rows import ANALYZER_PASSWORD, ScheduledItem, analyzer_account, schedule, study_row

STUDY_UID = "1.2.826.0.1.3680043.8.498.19401"
TXN = "2.25.1940001"
DICOM_JSON = "application/dicom+json"


@pytest.fixture
def item(app: FastAPI) -> ScheduledItem:
    study_row(engine_of(app), STUDY_UID)
    analyzer_account(engine_of(app), "ai-one")
    return schedule(engine_of(app), STUDY_UID)


@pytest.fixture
def headers(client: TestClient, item: ScheduledItem) -> dict[str, str]:
    del item
    return login(client, "ai-one", ANALYZER_PASSWORD)


def _state(value: Any = "IN PROGRESS", txn: Any = TXN) -> dict[str, Any]:
    return {"00741000": {"vr": "CS", "Value": [value]}, "00081195": {"vr": "UI", "Value": [txn]}}


def _raw(text: str) -> bytes:
    return text.encode()


NESTED = {"00741002": {"vr": "SQ", "Value": [{}]}}
for _ in range(12):
    NESTED = {"00741002": {"vr": "SQ", "Value": [NESTED]}}

# (body, content type, status, words the message must hold)
REFUSED: list[tuple[bytes, str, int, str]] = [
    (_raw("{not json"), DICOM_JSON, 400, "not JSON"),
    (_raw("[]"), DICOM_JSON, 400, "exactly one dataset"),
    (json.dumps([_state(), _state()]).encode(), DICOM_JSON, 400, "exactly one dataset"),
    (_raw('"IN PROGRESS"'), DICOM_JSON, 400, "one DICOM JSON dataset"),
    (json.dumps(_state(5)).encode(), DICOM_JSON, 400, "(0074,1000) ProcedureStepState"),
    (json.dumps(_state(["x"])).encode(), DICOM_JSON, 400, "(0074,1000) ProcedureStepState"),
    (json.dumps(_state(txn="1.2.abc")).encode(), DICOM_JSON, 400, "(0008,1195) TransactionUID"),
    (json.dumps(_state(txn="1." * 40)).encode(), DICOM_JSON, 400, "(0008,1195)"),
    (json.dumps(_state(value="IN\\PROGRESS")).encode(), DICOM_JSON, 400, "backslash"),
    (json.dumps(_state(value="IN\nPROGRESS")).encode(), DICOM_JSON, 400, "control"),
    (_raw('{"00741000": {"vr": "UI", "Value": ["1.2"]}}'), DICOM_JSON, 400, "its VR is CS"),
    (_raw('{"00741000": {"vr": "CS", "Value": "IN PROGRESS"}}'), DICOM_JSON, 400, "an array"),
    (_raw('{"00741000": "IN PROGRESS"}'), DICOM_JSON, 400, "(0074,1000)"),
    (_raw('{"ProcedureStepState": {"vr": "CS"}}'), DICOM_JSON, 400, "not an attribute tag"),
    (_raw('{"00741000": {"vr": "CS"}, "00741000": {"vr": "CS"}}'), DICOM_JSON, 400, "twice"),
    (
        _raw('{"7FE00010": {"vr": "OB", "BulkDataURI": "http://169.254.169.254/"}}'),
        DICOM_JSON,
        400,
        "BulkDataURI",
    ),
    (json.dumps(NESTED).encode(), DICOM_JSON, 400, "nested"),
    (_raw("[" * 100_000 + "]" * 100_000), DICOM_JSON, 400, "nested too deeply"),
    (json.dumps(_state()).encode(), "text/plain", 400, "DICOM JSON"),
    (b"\xff\xfe{}", DICOM_JSON, 400, "not"),
    (b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}", DICOM_JSON, 413, "larger than"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    REFUSED,
    ids=[f"{status}-{words}-{index}" for index, (_, _, status, words) in enumerate(REFUSED)],
)
def test_a_claim_with_a_hostile_body_is_refused_naming_why(
    app: FastAPI,
    client: TestClient,
    item: ScheduledItem,
    headers: dict[str, str],
    body: bytes,
    content_type: str,
    status: int,
    words: str,
) -> None:
    answer = client.put(
        f"/dicom-web/workitems/{item.uid}/state",
        content=body,
        headers={**headers, "Content-Type": content_type},
    )
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"]
    with Session(engine_of(app)) as session:
        workitem = session.get(Workitem, item.workitem_id)
        assert workitem is not None and workitem.state is WorkitemState.SCHEDULED


def test_a_body_as_pydicom_writes_it_is_read_as_an_object_or_an_array_of_one(
    client: TestClient, item: ScheduledItem, headers: dict[str, str]
) -> None:
    claim = Dataset()
    claim.ProcedureStepState = "IN PROGRESS"
    claim.TransactionUID = TXN
    as_json = claim.to_json_dict()
    answer = client.put(
        f"/dicom-web/workitems/{item.uid}/state",
        content=json.dumps([as_json]),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    progress = Dataset()
    step = Dataset()
    step.ProcedureStepProgress = 42
    step.ProcedureStepProgressDescription = "reading the images"
    progress.ProcedureStepProgressInformationSequence = [step]
    progress.TransactionUID = TXN
    updated = client.post(
        f"/dicom-web/workitems/{item.uid}",
        content=json.dumps(progress.to_json_dict()),
        headers={**headers, "Content-Type": DICOM_JSON},
    )
    assert updated.status_code == 200, updated.text
    served = Dataset.from_json(
        client.get(f"/dicom-web/workitems/{item.uid}", headers=headers).json()[0]
    )
    assert served.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 42


@pytest.mark.parametrize(
    "query",
    ["?not-a-uid", "?1.2.3&4.5.6", "?transaction=1.2.3"],
)
def test_an_update_takes_the_transaction_uid_alone_as_its_query(
    client: TestClient, item: ScheduledItem, headers: dict[str, str], query: str
) -> None:
    answer = client.post(
        f"/dicom-web/workitems/{item.uid}{query}",
        json={},
        headers={**headers, "Content-Type": DICOM_JSON},
    )
    assert answer.status_code == 400, answer.text
