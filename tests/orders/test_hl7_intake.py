"""Orders from the HIS over real MLLP sockets into the database: ACK codes, the message log,
duplicates, order control. The sidecar runs for real (uvicorn + its MLLP listener)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from hl7_samples import (
    NO_PATIENT_ID,
    NOT_HL7,
    OMI_NW_251,
    ORM_CA_251,
    ORM_DC_24,
    ORM_NW_24_LATIN1,
    ORM_NW_251,
    ORM_NW_TWO_ORDERS,
    ORM_SC_251,
    ORM_V22,
    ORM_XO_251,
    ORU_R01_INBOUND,
    UNKNOWN_ORDER_CONTROL,
    with_field,
)
from hospital import Hospital
from stack import wait_for


def test_new_order_is_committed_then_acknowledged(hospital: Hospital) -> None:
    ack = hospital.send(ORM_NW_251)
    assert (ack.code, ack.acknowledged_control_id) == ("AA", "MSG-NW-0001")

    order = hospital.order("ACC-24-0001")
    assert order["status"] == "SCHEDULED"
    assert order["source"] == "hl7"
    assert order["patientId"] == "4711-0815"
    assert order["issuerOfPatientId"] == "GENHOSP"
    assert order["patientName"] == "Müller-Lüdenscheidt^Jürgen^Karl^Dr^Jr"
    assert order["patientBirthDate"] == "1970-01-02"
    assert order["patientSex"] == "M"
    assert order["placerOrderNumber"] == "PLC-1001"
    assert order["fillerOrderNumber"] == "FIL-2001"
    assert order["requestedProcedureId"] == "RP-7788"
    assert order["procedureCode"] == "CTTHAB"
    assert order["procedureDescription"] == "CT Thorax & Abdomen"
    assert order["modality"] == "CT"
    assert order["priority"] == "STAT"
    assert order["scheduledAt"] == "2024-03-02T07:15:00Z"
    assert order["studyInstanceUID"] == "1.2.826.0.1.3680043.9.7.1.20240301.1001"
    assert order["referringPhysician"] == "Kildare^James^^Dr"  # PV1-8 (PV1-7 is attending)
    assert order["orderingProvider"] == "House^Gregory^^Dr"  # XCN-7 degree has no PN place
    assert order["clinicalIndication"] == "Cough \\ dyspnoea"

    logged = hospital.get("/api/hl7/messages", direction="in")["items"]
    assert [(m["controlId"], m["status"], m["ackCode"], m["orderId"]) for m in logged] == [
        ("MSG-NW-0001", "accepted", "AA", order["id"])
    ]
    detail = hospital.get(f"/api/hl7/messages/{logged[0]['id']}")
    assert detail["raw"].startswith("MSH|^~\\&|HIS")
    assert "MSA|AA|MSG-NW-0001" in detail["ackRaw"]


def test_repeated_control_id_gets_the_original_ack_and_creates_nothing(hospital: Hospital) -> None:
    first = hospital.mllp.send(ORM_NW_251)
    again = hospital.mllp.send(ORM_NW_251)
    assert again == first
    assert hospital.get("/api/imaging-orders")["total"] == 1
    assert hospital.get("/api/hl7/messages")["total"] == 1


def test_repeated_change_gets_the_original_ack_and_changes_nothing_again(
    hospital: Hospital,
) -> None:
    assert hospital.send(ORM_NW_251).code == "AA"
    first = hospital.mllp.send(ORM_XO_251)
    assert hospital.send(ORM_SC_251).code == "AA"

    # Applied again, then undone when its log row meets the first one's.
    assert hospital.mllp.send(ORM_XO_251) == first
    assert hospital.order("ACC-24-0001")["status"] == "IN_PROGRESS"
    updates = hospital.get("/api/audit", action="order.updated")["items"]
    assert len(updates) == 1
    assert hospital.get("/api/hl7/messages")["total"] == 3


def test_a_lost_database_connection_costs_no_message(hospital: Hospital) -> None:
    url = hospital.sidecar.settings.database_url
    if not url.startswith("postgresql"):
        pytest.skip("terminates PostgreSQL backends")
    assert hospital.send(ORM_NW_251).code == "AA"
    # As after a database restart: the intake's pooled connection is dead when it is next used.
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        assert connection.execute(sa.text(f"SELECT pg_terminate_backend(pid) {others}")).all()

        def all_gone() -> bool:
            # The worklist writer may connect again meanwhile (it reads the first order after
            # its announcement): terminated again until none is left.
            connection.execute(sa.text(f"SELECT pg_terminate_backend(pid) {others}"))
            return connection.execute(sa.text(f"SELECT count(*) {others}")).scalar() == 0

        wait_for(all_gone, timeout=10, what="the sidecar's connections terminated")
    admin.dispose()

    ack = hospital.send(ORM_XO_251)
    assert ack.code == "AA", ack.text
    assert hospital.order("ACC-24-0001")["priority"] == "ROUTINE"


def test_change_cancel_and_status_messages_follow_the_order(hospital: Hospital) -> None:
    assert hospital.send(ORM_NW_251).code == "AA"
    assert hospital.send(ORM_XO_251).code == "AA"
    changed = hospital.order("ACC-24-0001")
    assert changed["scheduledAt"] == "2024-03-03T08:30:00Z"
    assert changed["priority"] == "ROUTINE"

    assert hospital.send(ORM_SC_251).code == "AA"
    assert hospital.order("ACC-24-0001")["status"] == "IN_PROGRESS"

    assert hospital.send(ORM_CA_251).code == "AA"
    assert hospital.order("ACC-24-0001")["status"] == "CANCELLED"

    # A change to a cancelled order is refused with the reason, not dropped.
    late = hospital.send(with_field(ORM_XO_251, "MSH", 10, "MSG-XO-LATE"))
    assert late.code == "AE"
    assert "CANCELLED" in late.text


def test_discontinue_of_a_v24_order_and_latin1_bytes(hospital: Hospital) -> None:
    assert hospital.send(ORM_NW_24_LATIN1).code == "AA"
    order = hospital.order("ACC-24-0024")
    assert order["patientName"] == "Ødegård^Bjørn"
    assert order["priority"] == "URGENT"
    assert hospital.send(ORM_DC_24).code == "AA"
    assert hospital.order("ACC-24-0024")["status"] == "CANCELLED"


def test_two_order_groups_make_two_orders(hospital: Hospital) -> None:
    assert hospital.send(ORM_NW_TWO_ORDERS).code == "AA"
    assert hospital.order("ACC-3001")["modality"] == "CR"
    assert hospital.order("ACC-3002")["studyInstanceUID"] == "1.2.826.0.1.3680043.9.7.3002"


def test_omi_o23_is_accepted(hospital: Hospital) -> None:
    assert hospital.send(OMI_NW_251).code == "AA"
    assert hospital.get("/api/imaging-orders")["total"] == 1


@pytest.mark.parametrize(
    ("message", "code", "error_code"),
    [
        (NO_PATIENT_ID, "AE", "101"),
        (UNKNOWN_ORDER_CONTROL, "AE", "103"),
        (with_field(ORM_SC_251, "ORC", 5, "ZZ"), "AE", "103"),
        (with_field(ORM_NW_251, "OBR", 24, "XX"), "AE", "103"),
        (ORM_V22, "AR", "203"),
        (ORU_R01_INBOUND, "AR", "200"),  # ADT goes to the patient registry (tests/patients)
    ],
)
def test_bad_messages_are_answered_with_the_reason_and_logged(
    hospital: Hospital, message: str, code: str, error_code: str
) -> None:
    ack = hospital.send(message)
    assert ack.code == code
    assert ack.error_code == int(error_code)
    assert ack.text
    assert hospital.get("/api/imaging-orders")["total"] == 0
    logged = hospital.get("/api/hl7/messages")["items"]
    assert len(logged) == 1
    assert logged[0]["status"] == ("rejected" if code == "AR" else "error")
    assert logged[0]["errorText"]


def test_change_for_an_unknown_order_is_answered_ae_204(hospital: Hospital) -> None:
    ack = hospital.send(ORM_XO_251)
    assert ack.code == "AE"
    assert ack.error_code == 204
    assert ack.error_location.startswith("ORC")


def test_duplicate_accession_number_in_a_new_message_is_refused(hospital: Hospital) -> None:
    assert hospital.send(ORM_NW_251).code == "AA"
    again = with_field(with_field(ORM_NW_251, "MSH", 10, "MSG-NW-0002"), "ORC", 2, "PLC-9")
    ack = hospital.send(with_field(again, "ZDS", 1, "1.2.3.4.5"))
    assert ack.code == "AE"
    assert ack.error_code == 205
    assert hospital.get("/api/imaging-orders")["total"] == 1


def test_something_that_is_not_hl7_still_gets_an_answer(hospital: Hospital) -> None:
    ack = hospital.send(NOT_HL7)
    assert ack.code == "AR"
    assert hospital.get("/api/hl7/messages")["items"][0]["status"] == "rejected"


def test_message_log_is_for_admins_and_the_integration_role(hospital: Hospital) -> None:
    url = f"{hospital.sidecar.url}/api/users"
    for role in ("integration", "physician"):
        created = httpx.post(
            url,
            headers=hospital.headers,
            json={"username": f"{role}-1", "password": "long-enough-password", "role": role},
        )
        assert created.status_code == 201
    results = {}
    for role in ("integration", "physician"):
        token = httpx.post(
            f"{hospital.sidecar.url}/api/auth/login",
            json={"username": f"{role}-1", "password": "long-enough-password"},
        ).json()["accessToken"]
        results[role] = httpx.get(
            f"{hospital.sidecar.url}/api/hl7/messages", headers={"Authorization": f"Bearer {token}"}
        ).status_code
    assert results == {"integration": 200, "physician": 403}


def test_health_shows_the_listener_and_the_worklist(hospital: Hospital) -> None:
    from stack import wait_for

    def health() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{hospital.sidecar.url}/health").json()
        return body

    assert health()["hl7"]["listening"] is True
    assert health()["hl7"]["port"] == hospital.sidecar.settings.mllp_port
    assert health()["worklist"] == {
        "enabled": True,
        "scheduledProcedureSteps": 0,
        "ordersNotOffered": 0,
        "ordersNotOfferedIds": [],
    }
    assert hospital.send(ORM_NW_251).code == "AA"
    wait_for(
        lambda: health()["worklist"]["scheduledProcedureSteps"] == 1,
        timeout=10,
        what="the new order on the worklist",
    )
    assert hospital.send(ORM_CA_251).code == "AA"
    wait_for(
        lambda: health()["worklist"]["scheduledProcedureSteps"] == 0,
        timeout=10,
        what="the cancelled order off the worklist",
    )
