"""Results to the HIS: a signed report's ORU^R01 delivered over MLLP to a HIS on loopback,
through the durable outbox (exactly once, in order, retried while the HIS is down)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlmodel import Session, col, select

from hl7.errors import AckCode
from hl7.mllp.client import MllpClient
from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.ingest.sync import OrthancSync
from sidecar.main import create_app
from sidecar.results.message_log import Hl7Direction, Hl7Message
from sidecar.results.outbox import ResultOutbox
from sidecar.results.routing import ResultRouting

from builders import UID_ROOT, orthanc_study, seed_study
from fake_orthanc_rest import FakeOrthanc
from his_simulator import HisSimulator
from reporting import SECTIONS, ordered_study, sign, write_report
from stack import free_port, wait_for
from testapp import engine_of, service_of

Headers = dict[str, str]


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def send_preliminary() -> bool:
    return False


@pytest.fixture
def settings(settings: Settings, his: HisSimulator, send_preliminary: bool) -> Settings:
    return settings.model_copy(
        update={
            "his_mllp_host": "127.0.0.1",
            "his_mllp_port": his.port,
            "his_mllp_timeout": 2.0,
            "his_application": "HIS",
            "his_facility": "GENERAL",
            "hl7_facility": "RADIOLOGY-DEPT",
            # Fast retries: the outage tests wait for a real retry, not a sleep.
            "result_retry_max_delay": 0.2,
            "results_send_preliminary": send_preliminary,
            # Results only here; status updates share the outbox (tests/results/
            # test_status_updates.py).
            "his_status_updates": False,
        }
    )


def outbound(app: FastAPI) -> list[Hl7Message]:
    with Session(engine_of(app)) as session:
        return list(
            session.exec(
                select(Hl7Message)
                .where(Hl7Message.direction == Hl7Direction.OUTBOUND)
                .order_by(col(Hl7Message.id))
            ).all()
        )


def outbound_when(
    app: FastAPI, condition: Callable[[list[Hl7Message]], bool], what: str
) -> list[Hl7Message]:
    """Polls the outbound log until `condition` holds for it (15 s at most)."""

    def check() -> list[Hl7Message] | None:
        rows = outbound(app)
        return rows if rows and condition(rows) else None

    return wait_for(check, timeout=15, what=what)


def delivered(app: FastAPI, count: int) -> list[Hl7Message]:
    return outbound_when(
        app,
        lambda rows: sum(r.status == "delivered" for r in rows) == count,
        f"{count} result(s) delivered",
    )


def segments(raw: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in raw.split("\r") if s.startswith(name + "|")]


def test_a_signed_report_reaches_the_his_as_an_oru_segment_by_segment(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id, order = ordered_study(app, client, technologist)
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    (received,) = his.wait_for(1)
    message = parse_message(
        received.raw, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    )
    message.validate()  # hl7apy's own structure check, v2.5.1
    msh = segments(received.raw, "MSH")[0]
    assert msh[2:6] == ["RADIOLOGY", "RADIOLOGY-DEPT", "HIS", "GENERAL"]
    assert (msh[8], msh[11]) == ("ORU^R01^ORU_R01", "2.5.1")
    pid = segments(received.raw, "PID")[0]
    assert pid[3] == "PAT-0001^^^HOSP^MR"
    assert (pid[5], pid[7], pid[8]) == ("DOE^JANE", "19700101", "F")
    orc = segments(received.raw, "ORC")[0]
    assert orc[1:4] == ["RE", order["placerOrderNumber"], order["accessionNumber"]]
    assert orc[5] == "CM"
    obr = segments(received.raw, "OBR")[0]
    assert obr[2:5] == [
        order["placerOrderNumber"],
        order["accessionNumber"],
        "CTHEAD^CT head without contrast^L",
    ]
    assert (obr[16], obr[18], obr[24], obr[25]) == (
        "DR-0042^HOUSE^GREGORY",
        order["accessionNumber"],
        "RAD",
        "F",
    )
    observations = segments(received.raw, "OBX")
    texts = {(o[3].split("^")[0], o[5]) for o in observations}
    assert ("59776-5", SECTIONS["findings"].replace("|", "\\F\\").replace("^", "\\S\\")) in texts
    assert ("19005-8", SECTIONS["impression"]) in texts
    assert all(o[11] == "F" for o in observations)
    assert [int(o[1]) for o in observations] == list(range(1, len(observations) + 1))
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert observations[-1][2:6] == [
        "ST",
        "110180^Study Instance UID^DCM",
        "",
        study["studyInstanceUID"],
    ]
    # Done only on AA: the row is delivered, the order completed, both on record.
    (row,) = delivered(app, 1)
    assert (row.ack_code, row.report_id, row.result_status) == ("AA", report["id"], "F")
    assert row.control_id == msh[9]
    completed = client.get(f"/api/imaging-orders/{order['id']}", headers=technologist).json()
    assert completed["status"] == "COMPLETED"


def test_the_hl7_log_shows_the_result_and_its_acknowledgement(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    study_id, order = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    delivered(app, 1)

    listed = client.get(
        "/api/hl7/messages", params={"direction": "out"}, headers=admin_headers
    ).json()
    (item,) = listed["items"]
    assert (item["messageType"], item["status"], item["ackCode"]) == ("ORU^R01", "delivered", "AA")
    assert (item["orderId"], item["resultStatus"], item["attempts"]) == (order["id"], "F", 1)
    detail = client.get(f"/api/hl7/messages/{item['id']}", headers=admin_headers).json()
    assert detail["raw"].startswith("MSH|") and "MSA|AA|" in detail["ackRaw"]


def test_his_down_then_up_delivers_exactly_once(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    his.stop()
    study_id, _ = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    waiting = outbound_when(app, lambda rows: rows[0].attempts >= 2, "two failed attempts")[0]
    assert waiting.status == "pending"
    assert "no answer from the HIS" in (waiting.error_text or "")
    results = client.get("/health").json()["results"]
    assert (results["pending"], results["failed"]) == (1, 0)
    assert results["his"] == f"127.0.0.1:{his.port}" and results["lastError"]
    his.start()

    (row,) = delivered(app, 1)
    assert len(his.filed()) == 1
    assert len(his.received) == 1
    assert row.error_text is None
    assert client.get("/health").json()["results"]["pending"] == 0


def test_a_refusal_marks_the_result_failed_and_an_admin_retry_delivers_it(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    his.refuse_with(AckCode.ERROR, "Unknown placer order number")
    study_id, order = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    failed = outbound_when(app, lambda rows: rows[0].status == "failed", "the result failed")[0]
    assert failed.error_text == "AE: Unknown placer order number"
    assert failed.ack_code == "AE"
    listed = client.get(
        "/api/hl7/messages", params={"direction": "out", "status": "failed"}, headers=admin_headers
    ).json()
    assert [m["errorText"] for m in listed["items"]] == ["AE: Unknown placer order number"]
    still = client.get(f"/api/imaging-orders/{order['id']}", headers=technologist).json()
    assert still["status"] == "IN_PROGRESS"

    assert (
        client.post(f"/api/hl7/messages/{failed.id}/retry", headers=technologist).status_code == 403
    )
    his.accept()
    retried = client.post(f"/api/hl7/messages/{failed.id}/retry", headers=admin_headers)
    assert retried.status_code == 200, retried.text

    (row,) = delivered(app, 1)
    assert row.control_id == failed.control_id  # the same message, sent again
    assert [r.control_id for r in his.filed()] == [failed.control_id]
    done = client.get(f"/api/imaging-orders/{order['id']}", headers=technologist).json()
    assert done["status"] == "COMPLETED"
    again = client.post(f"/api/hl7/messages/{failed.id}/retry", headers=admin_headers)
    assert again.status_code == 409


def test_an_amendment_sends_a_corrected_result_after_the_final_one(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    his.stop()  # both results queue up while the HIS is away: order must still hold
    study_id, _ = ordered_study(app, client, technologist)
    rid = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])["id"]
    amended = client.post(
        f"/api/reports/{rid}/amend",
        json={"impression": "Subdural haematoma, smaller than first read.", "reason": "re-read"},
        headers=radiologist,
    )
    assert amended.status_code == 200, amended.text
    his.start()

    final, corrected = his.wait_for(2)
    assert segments(final.raw, "OBR")[0][25] == "F"
    assert segments(corrected.raw, "OBR")[0][25] == "C"
    assert all(o[11] == "C" for o in segments(corrected.raw, "OBX"))
    impressions = [o[5] for o in segments(corrected.raw, "OBX") if o[3].startswith("19005-8")]
    assert impressions == ["Subdural haematoma, smaller than first read."]
    assert [r.result_status for r in delivered(app, 2)] == ["F", "C"]


def test_a_failed_result_holds_back_later_results_of_the_same_order_only(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
    admin_headers: Headers,
) -> None:
    his.refuse_with(AckCode.REJECT, "Interface paused")
    study_id, _ = ordered_study(app, client, technologist)
    rid = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])["id"]
    outbound_when(app, lambda rows: rows[0].status == "failed", "first result failed")
    his.accept()
    amend = {"impression": "Amended.", "reason": "addendum"}
    assert client.post(f"/api/reports/{rid}/amend", json=amend, headers=radiologist).is_success
    other_study, _ = ordered_study(app, client, technologist, patient_id="PAT-0002")
    sign(client, radiologist, write_report(client, radiologist, other_study)["id"])

    # The other order's result goes; this order's C waits behind its failed F.
    (other,) = his.wait_for(1)
    assert "PAT-0002" in segments(other.raw, "PID")[0][3]
    held = outbound(app)[1]
    assert (held.result_status, held.status) == ("C", "pending")
    assert client.post(
        f"/api/hl7/messages/{outbound(app)[0].id}/retry", headers=admin_headers
    ).is_success
    filed = his.wait_for(3)
    assert [segments(m.raw, "OBR")[0][25] for m in filed] == ["F", "F", "C"]


def test_results_queued_before_a_restart_are_delivered_once_after_it(
    settings: Settings,
    his: HisSimulator,
    headers_for: Callable[[Role], Headers],
    app: FastAPI,
    client: TestClient,
    technologist: Headers,
) -> None:
    his.stop()
    radiologist = headers_for(Role.RADIOLOGIST)
    study_id, _ = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    client.__exit__(None, None, None)  # the sidecar stops with the result still pending
    assert outbound(app)[0].status == "pending"

    his.start()
    restarted = create_app(settings)
    with TestClient(restarted):
        (row,) = delivered(restarted, 1)
    assert row.status == "delivered"
    assert len(his.filed()) == 1 and len(his.received) == 1


def test_a_result_whose_ack_was_lost_is_sent_again_with_the_same_control_id(
    app: FastAPI,
    his: HisSimulator,
    client: TestClient,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    """A crash between the HIS's AA and our commit: the same MSH-10 again, filed once."""
    his.stop()
    study_id, _ = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    pending = outbound(app)[0]  # queued in the same transaction as the signature
    his.start()
    with MllpClient("127.0.0.1", his.port) as earlier_run:  # what the crashed run had sent
        earlier_run.send(pending.raw.encode())

    delivered(app, 1)
    assert [r.control_id for r in his.received] == [pending.control_id] * 2
    assert len(his.filed()) == 1


@pytest.mark.parametrize("send_preliminary", [True])
def test_preliminary_results_go_as_p_when_configured(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id, _ = ordered_study(app, client, technologist)
    report = write_report(client, radiologist, study_id)
    edited = client.patch(
        f"/api/reports/{report['id']}", json={"impression": "Draft two."}, headers=radiologist
    )
    assert edited.status_code == 200
    sign(client, radiologist, report["id"])

    filed = his.wait_for(3)
    assert [segments(m.raw, "OBR")[0][25] for m in filed] == ["P", "P", "F"]
    assert segments(filed[0].raw, "ORC")[0][5] == "IP"
    drafts = [o[5] for o in segments(filed[1].raw, "OBX") if o[3].startswith("19005-8")]
    assert drafts == ["Draft two."]


def test_the_outbox_backs_off_doubling_up_to_its_cap(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers
) -> None:
    service_of(app, ResultOutbox).stop()  # drive it by hand, with a clock of our own
    study_id, _ = ordered_study(app, client, technologist)
    sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    # The message was queued due at the real time of signing: the test clock starts there.
    now = [datetime.now(UTC)]
    closed = free_port()
    outbox = ResultOutbox(
        engine_of(app),
        lambda: MllpClient("127.0.0.1", closed, connect_timeout=0.5, retries=0),
        max_delay=8.0,
        clock=lambda: now[0],
    )

    delays: list[float | None] = []
    for _ in range(6):
        delays.append(outbox.run_once())
        assert outbox.run_once() == pytest.approx(delays[-1])  # not due yet: nothing sent
        now[0] += timedelta(seconds=delays[-1] or 0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert outbound(app)[0].attempts == 6


def test_a_report_signed_before_its_order_was_linked_is_sent_once_linked(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    created = client.post(
        "/api/imaging-orders",
        json={"patientId": "PAT-0001", "modality": "CT", "placerOrderNumber": "PL-LATE"},
        headers=technologist,
    )
    assert created.status_code == 201, created.text
    study_id = seed_study(engine_of(app), orthanc_study(f"{UID_ROOT}.99.1", accession_number=None))
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    assert report["orderId"] is None
    assert outbound(app) == []  # nowhere to send it yet

    linked = client.post(
        f"/api/studies/{study_id}/link-order",
        json={"orderId": created.json()["id"]},
        headers=technologist,
    )
    assert linked.status_code == 200, linked.text

    (result,) = his.wait_for(1)
    assert segments(result.raw, "ORC")[0][2] == "PL-LATE"
    (row,) = delivered(app, 1)
    assert row.report_id == report["id"]
    order = client.get(f"/api/imaging-orders/{created.json()['id']}", headers=technologist)
    assert order.json()["status"] == "COMPLETED"


def test_a_report_signed_before_its_order_arrived_is_sent_when_the_study_matches_it(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    # Images, report and signature first (an emergency scan), the order afterwards.
    arrived = orthanc_study(f"{UID_ROOT}.99.2", accession_number="ACC-LATE-2")
    study_id = seed_study(engine_of(app), arrived)
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    assert report["orderId"] is None
    created = client.post(
        "/api/imaging-orders",
        json={
            "patientId": "PAT-0001",
            "modality": "CT",
            "placerOrderNumber": "PL-LATE-2",
            "accessionNumber": "ACC-LATE-2",
        },
        headers=technologist,
    )
    assert created.status_code == 201, created.text
    assert outbound(app) == []

    # Orthanc reports the study stable again (a late image): matching links it to the order by
    # accession number, and the signed result goes out at once.
    orthanc = FakeOrthanc()
    orthanc.store(arrived)
    orthanc.log("StableStudy", arrived.orthanc_id)
    sync = OrthancSync(
        engine_of(app),
        orthanc,  # type: ignore[arg-type]
        interval=5,
        result_routing=service_of(app, ResultRouting),
        on_result_queued=service_of(app, ResultOutbox).wake,
    )
    assert sync.sync_round().registered == [arrived.orthanc_id]

    (result,) = his.wait_for(1)
    assert segments(result.raw, "ORC")[0][2] == "PL-LATE-2"
    (row,) = delivered(app, 1)
    assert row.report_id == report["id"]
    order = client.get(f"/api/imaging-orders/{created.json()['id']}", headers=technologist)
    assert order.json()["status"] == "COMPLETED"
