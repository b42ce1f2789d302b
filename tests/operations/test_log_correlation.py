"""Log correlation, on the running service: an HL7 message sent over a real MLLP socket, an API
request over a real HTTP socket, a study's registration and a result's delivery are each
followed by their id (`requestId` in the JSON lines) through every line they cause."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.core.settings import Settings

import json_log
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from finding_helpers import raise_finding
from his_simulator import HisSimulator
from hl7_samples import ORM_NW_251, UNKNOWN_ORDER_CONTROL, with_field
from hospital import Hospital, running_hospital
from reporting import ordered_study, write_report
from stack import Stack, wait_for
from webhook_receiver import WebhookReceiver

# Which id a line carries is settled in the process (sidecar.core.correlation), not in the
# database: the SQLite run checks it (the work itself runs on both, in its own tests).
pytestmark = pytest.mark.one_database

GENERATED = re.compile(r"[0-9a-f]{32}")
# The loggers of an HL7 message's path: the listener, the intakes.
HL7_PATH = {"hl7.mllp.server", "sidecar.orders.intake", "sidecar.patients.intake"}


@pytest.fixture
def hospital(tmp_path: Path, database_url: str) -> Iterator[Hospital]:
    with running_hospital(tmp_path, database_url) as his:
        yield his


def lines_of(entries: list[dict[str, Any]], request_id: str) -> list[str]:
    return [e["message"] for e in entries if e.get("requestId") == request_id]


def test_an_hl7_message_is_followed_by_its_control_id(hospital: Hospital) -> None:
    refused = with_field(UNKNOWN_ORDER_CONTROL, "MSH", 10, "MSG-RE-0009")
    hostile = with_field(ORM_NW_251, "MSH", 10, 'MSG "x" 1')
    with json_log.json_lines() as lines:
        start = lines.mark()
        assert hospital.send(ORM_NW_251).code == "AA"
        assert hospital.send(ORM_NW_251).code == "AA"  # sent again: the original ACK
        assert hospital.send(refused).code == "AE"
        hospital.send(hostile)
        entries = lines.entries_since(start)

    first, again = lines_of(entries, "MSG-NW-0001")[:1], lines_of(entries, "MSG-NW-0001")[1:]
    assert [m.split(" from ")[0] for m in first] == ["HL7 ORM^O01 MSG-NW-0001"]
    assert first[0].endswith("accepted: 1 order(s)")
    assert [m.split(" from ")[0] for m in again] == ["duplicate HL7 message MSG-NW-0001"]
    [answered] = lines_of(entries, "MSG-RE-0009")
    assert answered.startswith("HL7 message MSG-RE-0009 from") and " answered AE" in answered
    # An MSH-10 that is no acceptable id: a generated one, the same on each of its lines.
    hostile_ids = {e.get("requestId") for e in entries if 'MSG "x" 1' in e["message"]}
    assert len(hostile_ids) == 1 and GENERATED.fullmatch(str(hostile_ids.pop()))

    # Every line of a message's path, and every line naming a control id, carries its id.
    for entry in entries:
        named = [cid for cid in ("MSG-NW-0001", "MSG-RE-0009") if cid in entry["message"]]
        if named:
            assert entry.get("requestId") == named[0], entry
        if entry["logger"] in HL7_PATH and not entry["message"].startswith("MLLP connection"):
            assert "requestId" in entry, entry  # the connection's line is not a message's


def test_an_api_request_is_followed_by_its_x_request_id(hospital: Hospital) -> None:
    url = hospital.sidecar.url
    refused_login = {"username": "admin", "password": "not the password"}
    with json_log.json_lines() as lines:
        start = lines.mark()
        refused = httpx.post(
            f"{url}/api/auth/login", json=refused_login, headers={"X-Request-ID": "his-req-7"}
        )
        listed = httpx.get(
            f"{url}/api/imaging-orders",
            headers={**hospital.headers, "X-Request-ID": "0f8fad5b-d9cb-469f-a165-70867728950e"},
        )
        unnamed = httpx.get(f"{url}/api/imaging-orders", headers=hospital.headers)
        too_long = httpx.get(f"{url}/health", headers={"X-Request-ID": "a" * 129})
        quoted = httpx.get(f"{url}/health", headers={"X-Request-ID": 'x"}, {"level":"ERROR'})

        answers = (refused, listed, unnamed, too_long, quoted)
        ids = {answer.headers["X-Request-ID"] for answer in answers}

        def logged() -> list[dict[str, Any]] | None:
            # An access line is written once the answer's last byte is sent: the client may
            # read it before. (So may the hospital's login's be written after `start`.)
            entries = lines.entries_since(start)
            access = {e.get("requestId") for e in entries if e["logger"] == "sidecar.http"}
            return entries if ids <= access else None

        entries = wait_for(logged, timeout=10, what="the five access lines")

    assert (refused.status_code, refused.headers["X-Request-ID"]) == (401, "his-req-7")
    assert lines_of(entries, "his-req-7")[0] == "login refused"
    [access] = lines_of(entries, "his-req-7")[1:]
    assert access.startswith("POST /api/auth/login -> 401 in ")

    assert listed.headers["X-Request-ID"] == "0f8fad5b-d9cb-469f-a165-70867728950e"
    [access] = lines_of(entries, "0f8fad5b-d9cb-469f-a165-70867728950e")
    assert access.startswith("GET /api/imaging-orders -> 200 in ")

    for answer in (unnamed, too_long, quoted):
        generated = answer.headers["X-Request-ID"]
        assert GENERATED.fullmatch(generated), generated
        [access] = lines_of(entries, generated)
        assert access.split(" -> ")[0] in ("GET /api/imaging-orders", "GET /health")
    assert "a" * 129 not in str(entries) and '"level":"ERROR' not in str(entries)
    # Every access line names its request.
    assert all("requestId" in e for e in entries if e["logger"] == "sidecar.http")


def test_an_unhandled_error_is_logged_and_answered_under_its_request_id(
    hospital: Hospital,
) -> None:
    """Logged and answered outside the access log's middleware (Starlette's error middleware,
    then the server): still under the request's id, the error's message withheld."""
    secret = "-".join(("PAT", "CANARY", "500"))

    def fail() -> None:
        raise RuntimeError(secret)

    app = hospital.sidecar.app
    app.add_api_route("/api/test-failure", fail)
    app.router.routes.insert(0, app.router.routes.pop())
    with json_log.json_lines() as lines:
        failed = httpx.get(
            f"{hospital.sidecar.url}/api/test-failure", headers={"X-Request-ID": "bug-2"}
        )
        assert (failed.status_code, failed.headers["X-Request-ID"]) == (500, "bug-2")

        def logged() -> list[dict[str, Any]] | None:
            found = [e for e in lines.entries() if e.get("requestId") == "bug-2"]
            return found if any(e["logger"] == "uvicorn.error" for e in found) else None

        found = wait_for(logged, timeout=10, what="the server's own line about the error")
    loggers = {e["logger"] for e in found}
    assert loggers == {"sidecar.http", "sidecar.core.api_errors", "uvicorn.error"}
    for entry in found:
        if entry["logger"] != "sidecar.http":
            assert "builtins.RuntimeError: (message withheld" in entry["exception"], entry
    assert secret not in lines.text


def test_a_registration_is_followed_by_the_study_orthanc_id(stack: Stack, tmp_path: Path) -> None:
    images = make_study(tmp_path / "dicom", series_count=1, instances_per_series=2)
    with json_log.json_lines() as lines:
        assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
        study = stack.wait_for_study(images.study_instance_uid, instances=2)
        orthanc_id = study["orthancId"]

        def registered() -> list[str] | None:
            found = lines_of(lines.entries(), orthanc_id)
            return found if any(m.startswith("registered Orthanc study") for m in found) else None

        found = wait_for(registered, timeout=30, what="the registration's lines")
        entries = lines.entries()
    assert f"registered Orthanc study {orthanc_id}: 2 new images" in found
    # The registration's lines, and only they, name the study's Orthanc id.
    for entry in entries:
        if orthanc_id in entry["message"]:
            assert entry.get("requestId") == orthanc_id, entry


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def settings(settings: Settings, his: HisSimulator, receiver: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "his_mllp_host": "127.0.0.1",
            "his_mllp_port": his.port,
            "his_mllp_timeout": 2.0,
            "result_retry_max_delay": 0.2,
            "his_status_updates": False,
            "notification_service_url": receiver.url,
            "notification_timeout": 2.0,
            "notification_retry_max_delay": 0.2,
        }
    )


def test_a_result_delivery_is_followed_by_its_control_id(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: dict[str, str],
    technologist: dict[str, str],
) -> None:
    his.stop()  # the HIS down: the outbox says so, under the message's control id
    study_id, _ = ordered_study(app, client, technologist)
    report_id = write_report(client, radiologist, study_id)["id"]
    with json_log.json_lines() as lines:
        signed = client.post(
            f"/api/reports/{report_id}/sign",
            headers={**radiologist, "X-Request-ID": "sign-1"},
        )
        assert signed.headers["X-Request-ID"] == "sign-1"

        def not_answered() -> list[dict[str, Any]] | None:
            found = [e for e in lines.entries() if e["message"].startswith("HIS did not answer")]
            return found if len(found) >= 2 else None

        waiting = wait_for(not_answered, timeout=15, what="two attempts unanswered")
        his.start()
        (received,) = his.wait_for(1)
    control_id = received.raw.split("\r")[0].split("|")[9]
    assert {e.get("requestId") for e in waiting} == {control_id}
    signing = lines_of(lines.entries(), "sign-1")
    assert any(m.startswith("POST /api/reports/{report_id}/sign -> 200") for m in signing)


def test_a_notification_delivery_is_followed_by_its_id(
    app: FastAPI,
    client: TestClient,
    receiver: WebhookReceiver,
    radiologist: dict[str, str],
    technologist: dict[str, str],
) -> None:
    study_id, _ = ordered_study(app, client, technologist)
    receiver.answers = [500, 503]  # two failed attempts: each logged, then delivered
    with json_log.json_lines() as lines:
        raise_finding(client, radiologist, study_id)
        [posted, *_] = receiver.wait_for_count(3)

        def retried() -> list[dict[str, Any]] | None:
            found = [e for e in lines.entries() if " not delivered " in e["message"]]
            return found if len(found) == 2 else None

        failures = wait_for(retried, timeout=15, what="two failed attempts logged")
    notification_id = posted["notificationId"]
    # The id the notification service deduplicates on, and is sent as X-Request-ID.
    assert {e.get("requestId") for e in failures} == {notification_id}
    assert receiver.request_ids[:3] == [notification_id] * 3
