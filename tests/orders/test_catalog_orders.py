"""Orders resolved through the procedure catalog, over real MLLP and over the API: the catalog
fills what the order leaves empty (what the order says wins), a code the catalog does not know
with no modality is refused (AE 103 naming OBR-4 and the code; 422 over REST), and seed 002's
ORM without ORC is read as a new order."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from hl7.orders import parse_order_message

from hl7_samples import ORM_NW_251, SEED_002_ORM, with_field, without_segment
from hospital import Hospital

CHEST = {
    "code": "71020",
    "codingSystem": "C4",
    "description": "XR chest 2 views",
    "modality": "DX",
    "bodyPart": "CHEST",
    "stationAeTitle": "DX01",
    "stationName": "DX ROOM 1",
    "protocolCode": "CHEST-PA-LAT",
    "expectedMinutes": 15,
    "priority": "URGENT",
}
#: ORM_NW_251 naming procedure 71020 with no coding system, no text, no modality, no priority
#: (TQ1-9, ORC-7.6 and OBR-27.6 emptied; TQ1-7 still schedules it).
CODE_ONLY = ORM_NW_251
for _segment, _field, _value in (
    ("OBR", 4, "71020"),
    ("OBR", 24, ""),
    ("TQ1", 9, ""),
    ("ORC", 7, ""),
    ("OBR", 27, ""),
):
    CODE_ONLY = with_field(CODE_ONLY, _segment, _field, _value)


def add_entry(hospital: Hospital, **changes: Any) -> None:
    answer = httpx.post(
        f"{hospital.sidecar.url}/api/procedures",
        json={**CHEST, **changes},
        headers=hospital.headers,
    )
    assert answer.status_code == 201, answer.text


def last_logged(hospital: Hospital) -> dict[str, Any]:
    found: dict[str, Any] = hospital.get("/api/hl7/messages", limit=1)["items"][0]
    return found


def test_an_order_naming_only_a_code_takes_the_catalogs_values(hospital: Hospital) -> None:
    add_entry(hospital)
    ack = hospital.send(CODE_ONLY)
    assert ack.code == "AA", ack
    order = hospital.order("ACC-24-0001")
    assert {
        key: order[key]
        for key in (
            "procedureCode",
            "procedureCodingSystem",
            "procedureDescription",
            "modality",
            "bodyPart",
            "scheduledStationAet",
            "scheduledStationName",
            "protocolCode",
            "priority",
        )
    } == {
        "procedureCode": "71020",
        "procedureCodingSystem": "C4",
        "procedureDescription": "XR chest 2 views",
        "modality": "DX",
        "bodyPart": "CHEST",
        "scheduledStationAet": "DX01",
        "scheduledStationName": "DX ROOM 1",
        "protocolCode": "CHEST-PA-LAT",
        "priority": "URGENT",  # the catalog's default: the message names none
    }
    assert last_logged(hospital)["note"] is None


def test_what_the_message_says_wins_over_the_catalog(hospital: Hospital) -> None:
    add_entry(hospital)
    sent = with_field(ORM_NW_251, "OBR", 4, "71020^Chest two views^LN")  # OBR-24 CT, TQ1 S
    assert hospital.send(sent).code == "AA"
    order = hospital.order("ACC-24-0001")
    assert order["modality"] == "CT"
    assert order["priority"] == "STAT"
    assert order["procedureDescription"] == "Chest two views"
    assert order["procedureCodingSystem"] == "LN"
    assert order["scheduledStationAet"] == "DX01"  # the message has no field for it


def test_a_code_not_in_the_catalog_without_modality_is_refused_ae_103(
    hospital: Hospital,
) -> None:
    add_entry(hospital)
    ack = hospital.send(with_field(CODE_ONLY, "OBR", 4, "99999^Unknown"))
    assert (ack.code, ack.error_code, ack.error_location) == ("AE", 103, "OBR^1^4^1^1")
    assert "OBR-4" in ack.text and "99999" in ack.text, ack.text
    assert hospital.get("/api/imaging-orders")["total"] == 0
    logged = last_logged(hospital)
    assert logged["ackCode"] == "AE" and "99999" in logged["errorText"]


def test_a_code_not_in_the_catalog_with_a_modality_is_accepted(hospital: Hospital) -> None:
    assert hospital.send(with_field(ORM_NW_251, "OBR", 4, "99999^Unknown")).code == "AA"
    order = hospital.order("ACC-24-0001")
    assert (order["modality"], order["scheduledStationAet"]) == ("CT", None)


def test_catalog_codes_are_matched_after_hl7_unescaping(hospital: Hospital) -> None:
    add_entry(hospital, code="XR&CHEST")
    ack = hospital.send(with_field(CODE_ONLY, "OBR", 4, "XR\\T\\CHEST^Chest"))
    assert ack.code == "AA", ack
    order = hospital.order("ACC-24-0001")
    assert (order["procedureCode"], order["modality"]) == ("XR&CHEST", "DX")


def test_a_code_dicom_cannot_hold_is_refused_before_the_catalog_is_asked(
    hospital: Hospital,
) -> None:
    # \E\ is an escaped backslash: a DICOM Code Value cannot hold it (it separates values).
    ack = hospital.send(with_field(CODE_ONLY, "OBR", 4, "XR\\E\\1^Chest"))
    assert (ack.code, ack.error_code, ack.error_location) == ("AE", 102, "OBR^1^4^1^1")
    assert hospital.get("/api/imaging-orders")["total"] == 0


def test_seed_002_orm_without_orc_is_a_new_order_when_its_code_resolves(
    hospital: Hospital,
) -> None:
    refused = hospital.send(SEED_002_ORM)
    assert (refused.code, refused.error_code, refused.error_location) == ("AE", 103, "OBR^1^4^1^1")
    assert "CR" in refused.text

    add_entry(hospital, code="CR", codingSystem="LN", modality="CR", description="Chest X-Ray")
    resent = with_field(SEED_002_ORM, "MSH", 10, "MSG124")
    ack = hospital.send(resent)
    assert ack.code == "AA", ack
    orders = hospital.get("/api/imaging-orders")["items"]
    assert len(orders) == 1
    order = orders[0]
    assert (order["patientId"], order["fillerOrderNumber"]) == ("PAT123456", "ORD789012")
    assert (order["modality"], order["procedureCodingSystem"]) == ("CR", "LOINC")
    assert order["status"] == "PENDING"  # no TQ1, OBR-27 or ORC-7: not yet scheduled
    logged = last_logged(hospital)
    assert logged["ackCode"] == "AA"
    assert logged["note"] == ("ORC segment missing: order group 1 read as a new order (ORC-1 NW)")


def test_order_groups_without_orc_are_read_one_per_obr() -> None:
    two = SEED_002_ORM + "OBR|2||ORD789013|CT^CT head^LOINC\r"
    message = parse_order_message(two)
    assert [group.order_control.value for group in message.orders] == ["NW", "NW"]
    assert all(group.common_order.implied for group in message.orders)
    assert [group.procedure.code for group in message.orders if group.procedure] == ["CR", "CT"]
    # With an ORC, a group is read as before.
    assert not parse_order_message(ORM_NW_251).orders[0].common_order.implied
    # A TQ1 before any ORC or OBR is still out of place.
    with pytest.raises(Exception, match="TQ1 segment before the first ORC"):
        parse_order_message(without_segment(ORM_NW_251, "ORC"))


# --- over REST ------------------------------------------------------------------------------


def test_an_order_over_the_api_takes_the_catalogs_values(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    assert client.post("/api/procedures", json=CHEST, headers=admin_headers).status_code == 201
    created = client.post(
        "/api/imaging-orders",
        json={"patientId": "P1", "procedureCode": "71020", "scheduledStationAet": "DX09"},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    order = created.json()
    assert (order["modality"], order["scheduledStationAet"]) == ("DX", "DX09")
    assert (order["scheduledStationName"], order["protocolCode"]) == ("DX ROOM 1", "CHEST-PA-LAT")
    assert order["priority"] == "URGENT"

    told = client.post(
        "/api/imaging-orders",
        json={"patientId": "P1", "procedureCode": "71020", "modality": "CR", "priority": "STAT"},
        headers=admin_headers,
    ).json()
    assert (told["modality"], told["priority"]) == ("CR", "STAT")


@pytest.mark.parametrize("body", [{"procedureCode": "NOPE"}, {}])
def test_an_order_over_the_api_without_modality_needs_a_known_code(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, str]
) -> None:
    answer = client.post(
        "/api/imaging-orders", json={"patientId": "P1", **body}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["location"] == "body.modality"
    assert client.get("/api/imaging-orders", headers=admin_headers).json()["total"] == 0
