"""The radiologist's day against the real parts (issue 14): orders of three priorities, their
images sent over C-STORE to a real Orthanc in the order a busy department would, the sidecar
syncing them, the assignment rules placing them (a pool of three radiologists: one away, one
at its maxOpen), the same-patient rule, the worklist's order, two radiologists claiming one
study at the same instant over HTTP, the second reader's 409, take-over and release."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

PASSWORD = "Rq7-vT9-Lm2-xP4-reading"
SECTIONS = {"findings": "No acute intracranial abnormality.", "impression": "Normal."}


class Reader:
    def __init__(self, stack: Stack, username: str) -> None:
        created = stack.api(
            "POST",
            "/api/users",
            json={"username": username, "password": PASSWORD, "role": "radiologist"},
        )
        assert created.status_code == 201, created.text
        self.id: int = created.json()["id"]
        self.name = username
        assert stack.sidecar is not None
        self.url = stack.sidecar.url
        self.headers = {"Authorization": f"Bearer {stack.login(username, PASSWORD)}"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}{path}", headers=self.headers, timeout=10, **kwargs
        )


def order_and_images(
    stack: Stack, tmp_path: Path, *, priority: str, patient_id: str, modality: str = "CT"
) -> int:
    """An order, then its images over C-STORE; waits until the study is in the reading queue
    (registered, matched to its order, rules applied). Returns the study id."""
    created = stack.api(
        "POST",
        "/api/imaging-orders",
        json={
            "patientId": patient_id,
            "issuerOfPatientId": "HOSP",
            "patientName": "DOE^JANE",
            "modality": modality,
            "bodyPart": "HEAD",
            "procedureCode": f"{modality}HEAD",
            "procedureDescription": f"{modality} head",
            "priority": priority,
            "clinicalIndication": "Headache",
        },
    )
    assert created.status_code == 201, created.text
    order = created.json()
    images = make_study(
        tmp_path / order["accessionNumber"],
        series_count=1,
        instances_per_series=2,
        modality=modality,
        accession_number=order["accessionNumber"],
        patient_id=patient_id,
        study_instance_uid=order["studyInstanceUID"],
        body_part="HEAD",
    )
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success

    def queued() -> dict[str, Any] | None:
        items: list[dict[str, Any]] = stack.api(
            "GET", "/api/reading-worklist", params={"limit": 1000}
        ).json()["items"]
        for item in items:
            if item["accessionNumber"] == order["accessionNumber"] and item["priority"] == priority:
                return item  # matched to its order (the priority comes from it)
        return None

    item: dict[str, Any] = wait_for(queued, timeout=30, what="study in the reading queue")
    return int(item["studyId"])


def holders(stack: Stack) -> dict[int, str | None]:
    items = stack.api("GET", "/api/reading-worklist", params={"limit": 1000}).json()["items"]
    return {i["studyId"]: (i["assignedTo"] or {}).get("name") for i in items}


def test_a_reading_day_on_the_real_stack(stack: Stack, tmp_path: Path) -> None:
    full = Reader(stack, "dr.full")
    away = Reader(stack, "dr.away")
    free = Reader(stack, "dr.free")
    second = Reader(stack, "dr.second")
    assert stack.api("PATCH", f"/api/users/{full.id}", json={"maxOpen": 1}).status_code == 200
    assert stack.api("PATCH", f"/api/users/{away.id}", json={"available": False}).status_code == 200
    rule = stack.api(
        "POST",
        "/api/assignment-rules",
        json={"name": "CT", "modality": "CT", "pool": [full.id, away.id, free.id]},
    )
    assert rule.status_code == 201, rule.text

    # Arrival order: routine first, STAT last.
    routine = order_and_images(stack, tmp_path, priority="ROUTINE", patient_id="P-100")
    urgent = order_and_images(stack, tmp_path, priority="URGENT", patient_id="P-200")
    stat = order_and_images(stack, tmp_path, priority="STAT", patient_id="P-300")
    # Nobody has work: the tie goes to the lower id (dr.full), which is then at its maxOpen;
    # dr.away is never chosen.
    assert holders(stack) == {routine: "dr.full", urgent: "dr.free", stat: "dr.free"}

    # With room again dr.full has less work, but dr.free reads this patient's other study.
    assert stack.api("PATCH", f"/api/users/{full.id}", json={"maxOpen": 10}).status_code == 200
    follow_up = order_and_images(stack, tmp_path, priority="ROUTINE", patient_id="P-300")
    assert holders(stack)[follow_up] == "dr.free"
    # Unmatched by any rule: unassigned.
    mr = order_and_images(stack, tmp_path, priority="URGENT", patient_id="P-400", modality="MR")
    assert holders(stack)[mr] is None

    queue = stack.api("GET", "/api/reading-worklist").json()["items"]
    assert [i["studyId"] for i in queue] == [stat, urgent, mr, routine, follow_up]
    assert [i["priority"] for i in queue] == ["STAT", "URGENT", "URGENT", "ROUTINE", "ROUTINE"]
    assert all(i["overdue"] is False for i in queue)
    by_id = {i["studyId"]: i for i in queue}
    assert by_id[follow_up]["priorStudies"] == 1
    assert by_id[stat]["procedure"] == {"code": "CTHEAD", "description": "CT head"}
    mine = free.call("GET", "/api/reading-worklist", params={"assignedTo": "me"}).json()
    assert [i["studyId"] for i in mine["items"]] == [stat, urgent, follow_up]

    # Two radiologists claim the unassigned study at the same instant: one wins.
    start = threading.Barrier(2)
    answers: dict[str, int] = {}

    def claim(reader: Reader) -> None:
        start.wait()
        answers[reader.name] = reader.call("POST", f"/api/studies/{mr}/claim").status_code

    threads = [threading.Thread(target=claim, args=(r,)) for r in (second, away)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(answers.values()) == [200, 409], answers
    winner = second if answers["dr.second"] == 200 else away
    loser = away if winner is second else second
    assert holders(stack)[mr] == winner.name

    # The loser cannot report it; the 409 names the holder.
    refused = loser.call("POST", "/api/reports", json={"studyId": mr, **SECTIONS})
    assert refused.status_code == 409
    assert winner.name in refused.json()["error"]["message"]
    report = winner.call("POST", "/api/reports", json={"studyId": mr, **SECTIONS})
    assert report.status_code == 201, report.text
    edit = loser.call("PATCH", f"/api/reports/{report.json()['id']}", json={"impression": "x"})
    assert edit.status_code == 409
    # Taken over explicitly: the loser now edits, and the winner is refused.
    taken = loser.call("POST", f"/api/studies/{mr}/claim", json={"takeOver": True})
    assert taken.status_code == 200, taken.text
    assert taken.json()["assignedTo"] == {"id": loser.id, "name": loser.name}
    assert (
        loser.call(
            "PATCH", f"/api/reports/{report.json()['id']}", json={"impression": "Normal study."}
        ).status_code
        == 200
    )
    assert (
        winner.call(
            "PATCH", f"/api/reports/{report.json()['id']}", json={"impression": "x"}
        ).status_code
        == 409
    )
    audit = stack.api("GET", "/api/audit", params={"action": "study.reading_taken_over"}).json()
    assert [(e["actor"], e["detail"]["previous_radiologist_id"]) for e in audit["items"]] == [
        (loser.name, winner.id)
    ]
    # Released: back to the queue, unassigned; the preliminary report is marked.
    assert loser.call("POST", f"/api/studies/{mr}/release").status_code == 200
    item = next(
        i for i in stack.api("GET", "/api/reading-worklist").json()["items"] if i["studyId"] == mr
    )
    assert (item["assignedTo"], item["preliminary"]) == (None, True)
