"""Order status updates to the HIS (ORM^O01, ORC-1 SC) through the results outbox: what each
change sends, that an order's updates and results reach the HIS in the order they happened even
across an outage, and that a cancellation the HIS made is not echoed back to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlmodel import Session, select

from hl7.errors import AckCode
from sidecar.core.settings import Settings
from sidecar.results.message_log import Hl7Message, Hl7MessageStatus
from sidecar.results.outbox import ResultOutbox

from builders import audit_events
from his_simulator import HisSimulator, Received
from hl7_samples import ORM_CA_251, ORM_NW_251
from hospital import running_hospital
from reporting import ordered_study, sign, write_report
from stack import wait_for
from testapp import engine_of, service_of

Headers = dict[str, str]


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def retry_cap() -> float:
    """RESULT_RETRY_MAX_DELAY: fast retries, unless a test needs a message to wait."""
    return 0.2


@pytest.fixture
def settings(settings: Settings, his: HisSimulator, retry_cap: float) -> Settings:
    return settings.model_copy(
        update={
            "his_mllp_host": "127.0.0.1",
            "his_mllp_port": his.port,
            "his_mllp_timeout": 2.0,
            "result_retry_max_delay": retry_cap,
        }
    )


def kind(received: Received) -> str:
    """ORC-5 of a status update (IP, CM, DC, CA), ORU-<OBR-25> of a result."""
    segments = {s[:3]: s.split("|") for s in received.raw.split("\r") if s}
    if segments["MSH"][8] == "ORM^O01^ORM_O01":
        assert segments["ORC"][1] == "SC"
        return segments["ORC"][5]
    return f"ORU-{segments['OBR'][25]}"


def test_a_status_update_is_a_valid_orm_naming_the_order(
    app: FastAPI, client: TestClient, his: HisSimulator, technologist: Headers
) -> None:
    _, order = ordered_study(app, client, technologist)

    (update,) = his.wait_for(1)
    # hl7apy reads it at STRICT level into the v2.5.1 ORM_O01 structure. (Its validate() cannot
    # be used: it models the OBR/RQD/RQ1/RXO/ODS/ODT choice as a sequence of required segments.)
    message = parse_message(update.raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    order_group = message.orm_o01_order
    assert order_group.orc.orc_1.value == "SC"
    detail = order_group.orm_o01_order_detail.orm_o01_obrrqdrq1rxoodsodt_suppgrp
    assert detail.obr.obr_18.value == order["accessionNumber"]
    assert message.orm_o01_patient.pid.pid_3.cx_1.value == "PAT-0001"
    fields = {s[:3]: s.split("|") for s in update.raw.split("\r") if s}
    assert (fields["MSH"][8], fields["MSH"][11]) == ("ORM^O01^ORM_O01", "2.5.1")
    assert fields["PID"][3] == "PAT-0001^^^HOSP^MR"
    assert (fields["ORC"][1], fields["ORC"][2], fields["ORC"][5]) == (
        "SC",
        order["placerOrderNumber"],
        "IP",
    )
    assert fields["ORC"][3] == fields["OBR"][3] == order["accessionNumber"]
    assert fields["OBR"][18] == order["accessionNumber"]
    assert fields["OBR"][4].startswith("CTHEAD^CT head without contrast")
    queued = audit_events(engine_of(app), "status_update.queued")
    assert [e.detail["order_status"] for e in queued] == ["IP"]
    wait_for(
        lambda: audit_events(engine_of(app), "status_update.delivered"),
        timeout=10,
        what="delivery audited",
    )


@pytest.mark.parametrize("retry_cap", [5.0])
def test_updates_and_results_of_an_order_keep_their_order_through_an_outage(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    technologist: Headers,
    radiologist: Headers,
) -> None:
    his.stop()
    study_id, _ = ordered_study(app, client, technologist)  # the exam started: IP queued
    outbox = service_of(app, ResultOutbox)
    wait_for(lambda: outbox.last_error, timeout=10, what="the IP waiting for the HIS")
    # The HIS is back and the report signed while the IP waits for its next attempt (a second
    # away): the ORU and CM are due before it is, and still wait behind it.
    his.start()
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    assert [kind(m) for m in his.wait_for(3)] == ["IP", "ORU-F", "CM"]
    assert len({m.control_id for m in his.received}) == 3


def test_a_his_that_refuses_status_updates_still_gets_its_results(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    technologist: Headers,
    radiologist: Headers,
) -> None:
    # Many HIS interfaces take ORU^R01 but not the filler's ORM^O01 status messages.
    his.refuse_with(AckCode.REJECT, "Unsupported message type")
    study_id, _ = ordered_study(app, client, technologist)
    wait_for(lambda: his.received, timeout=10, what="the IP refused")
    his.accept()

    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    assert [kind(m) for m in his.wait_for(2)] == ["ORU-F", "CM"]
    assert [kind(m) for m in his.received] == ["IP", "ORU-F", "CM"]
    with Session(engine_of(app)) as session:
        refused = session.exec(
            select(Hl7Message.order_status).where(Hl7Message.status == Hl7MessageStatus.FAILED)
        ).all()
    assert refused == ["IP"]  # kept, for an administrator to look at or retry


def test_cancelled_here_the_his_hears_ca_once(
    app: FastAPI, client: TestClient, his: HisSimulator, admin_headers: Headers
) -> None:
    created = client.post(
        "/api/imaging-orders",
        json={"patientId": "PAT-9", "modality": "CT", "placerOrderNumber": "PL-CA-1"},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    patched = client.patch(
        f"/api/imaging-orders/{order_id}", json={"status": "CANCELLED"}, headers=admin_headers
    )
    assert patched.status_code == 200, patched.text
    again = client.delete(f"/api/imaging-orders/{order_id}", headers=admin_headers)
    assert again.status_code == 200, again.text  # already cancelled: nothing new to tell

    assert [kind(m) for m in his.wait_for(1)] == ["CA"]
    other = client.post(
        "/api/imaging-orders",
        json={"patientId": "PAT-9", "modality": "CT", "placerOrderNumber": "PL-CA-2"},
        headers=admin_headers,
    ).json()
    assert client.delete(f"/api/imaging-orders/{other['id']}", headers=admin_headers).is_success
    assert [kind(m) for m in his.wait_for(2)] == ["CA", "CA"]
    assert len(his.received) == 2


def test_an_order_the_his_cancels_is_not_echoed_back(
    tmp_path: Path, database_url: str, his: HisSimulator
) -> None:
    with running_hospital(
        tmp_path, database_url, his_mllp_host="127.0.0.1", his_mllp_port=his.port
    ) as hospital:
        assert hospital.send(ORM_NW_251).code == "AA"
        assert hospital.send(ORM_CA_251).code == "AA"
        assert hospital.order("ACC-24-0001")["status"] == "CANCELLED"
        health = httpx.get(f"{hospital.sidecar.url}/health").json()["results"]  # 503: no Orthanc
        assert health["pending"] == 0 and health["failed"] == 0
    assert his.received == []
