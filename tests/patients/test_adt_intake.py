"""ADT over a real MLLP socket into the registry, both databases: registration, updates that
reach every order and the worklist files a modality reads, merges and their guards, identifier
changes, orders under a merged-away identifier, repeats, and hostile input. The sidecar runs for
real (uvicorn and its MLLP listener), Orthanc down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from hl7.ack import parse_ack
from sidecar.patients.intake import NOTHING_CHANGED

from hl7_samples import (
    ADT_A01_251,
    ADT_A08_251,
    ADT_A40_23,
    ADT_A40_251,
    ADT_A47_251,
    ORM_FOR_MRN_7001,
    message,
    with_field,
    without_segment,
)
from hospital import Hospital
from stack import wait_for

#: An order for the trauma registration that ADT_A40_251 merges away.
ORM_FOR_MRN_7666 = with_field(
    with_field(
        with_field(
            with_field(ORM_FOR_MRN_7001, "PID", 3, "MRN-7666^^^GENHOSP^MR"),
            "PID",
            5,
            "DOE^JOHN",
        ),
        "MSH",
        10,
        "MSG-NW-7666",
    ),
    "OBR",
    18,
    "ACC-7666",
)


def patients(hospital: Hospital, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = hospital.get("/api/patients", **params)["items"]
    return items


def the_patient(hospital: Hospital, patient_id: str, issuer: str = "GENHOSP") -> dict[str, Any]:
    found = patients(hospital, patientId=patient_id, issuer=issuer)
    assert len(found) == 1, found
    return found[0]


def worklist_item(hospital: Hospital, order_id: int) -> Any:
    path = hospital.sidecar.settings.worklist_dir
    assert path is not None
    file = Path(path) / f"{order_id}.wl"
    return dcmread(file) if file.exists() else None


def logged(hospital: Hospital) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = hospital.get("/api/hl7/messages", direction="in", limit=100)[
        "items"
    ]
    return items


def test_registration_and_update_reach_the_order_and_the_worklist(hospital: Hospital) -> None:
    ack = hospital.send(ADT_A01_251)
    assert (ack.code, ack.acknowledged_control_id) == ("AA", "ADT-0001")
    registered = the_patient(hospital, "MRN-7001")
    assert registered["patientName"] == "KOWALSKI^ANNA"
    assert registered["patientBirthDate"] == "1961-04-05"
    assert registered["source"] == "adt"
    assert registered["otherIdentifiers"] == [
        {"id": "PP-7001", "issuer": "PASSPORT", "type": "PPN"}
    ]

    assert hospital.send(ORM_FOR_MRN_7001).code == "AA"
    order = hospital.order("ACC-24-0001")
    assert order["patientRecordId"] == registered["id"]
    wait_for(lambda: worklist_item(hospital, order["id"]), timeout=10, what="the worklist item")

    assert hospital.send(ADT_A08_251).code == "AA"
    assert hospital.order("ACC-24-0001")["patientName"] == "KOWALSKA^ANNA^MARIA"

    def renamed() -> bool:
        item = worklist_item(hospital, order["id"])
        return item is not None and str(item.PatientName) == "KOWALSKA^ANNA^MARIA"

    wait_for(renamed, timeout=10, what="the worklist item rewritten with the new name")
    assert [(m["controlId"], m["status"], m["ackCode"]) for m in logged(hospital)][::-1] == [
        ("ADT-0001", "accepted", "AA"),
        ("MSG-NW-7001", "accepted", "AA"),
        ("ADT-0002", "accepted", "AA"),
    ]


def test_an_update_for_an_unknown_patient_creates_it(hospital: Hospital) -> None:
    assert hospital.send(ADT_A08_251).code == "AA"
    assert the_patient(hospital, "MRN-7001")["patientName"] == "KOWALSKA^ANNA^MARIA"


def test_the_log_says_when_an_adt_changed_nothing(hospital: Hospital) -> None:
    assert hospital.send(ADT_A01_251).code == "AA"
    assert hospital.send(ADT_A08_251).code == "AA"  # a new name, on a patient with no order
    assert hospital.send(with_field(ADT_A08_251, "MSH", 10, "ADT-0002-B")).code == "AA"
    notes = {m["controlId"]: m["note"] for m in logged(hospital)}
    assert (notes["ADT-0001"], notes["ADT-0002"]) == (None, None)
    assert notes["ADT-0002-B"] == NOTHING_CHANGED
    assert hospital.get("/api/audit", action="patient.updated")["total"] == 1


def test_a_repeated_control_id_gets_the_original_ack_and_changes_nothing(
    hospital: Hospital,
) -> None:
    first = hospital.mllp.send(ADT_A01_251)
    assert hospital.send(ADT_A08_251).code == "AA"
    assert hospital.mllp.send(ADT_A01_251) == first
    # The repeat was undone: the update stays.
    assert the_patient(hospital, "MRN-7001")["patientName"] == "KOWALSKA^ANNA^MARIA"
    assert len(logged(hospital)) == 2
    different = with_field(ADT_A08_251, "PID", 5, "OTHER^NAME")
    ack = hospital.send(different)  # a different message under a used control id
    assert (ack.code, ack.error_code) == ("AE", 205)


def test_a_merge_moves_the_orders_and_the_worklist_and_its_guards_hold(
    hospital: Hospital,
) -> None:
    assert hospital.send(ADT_A01_251).code == "AA"
    assert hospital.send(ORM_FOR_MRN_7666).code == "AA"
    prior_order = hospital.order("ACC-7666")
    prior = the_patient(hospital, "MRN-7666")
    survivor = the_patient(hospital, "MRN-7001")
    wait_for(lambda: worklist_item(hospital, prior_order["id"]), timeout=10, what="the item")

    merged = hospital.mllp.send(ADT_A40_251)
    assert parse_ack(merged).code == "AA"
    moved = hospital.order("ACC-7666")
    assert (moved["patientId"], moved["patientRecordId"]) == ("MRN-7001", survivor["id"])
    assert moved["patientName"] == "KOWALSKI^ANNA"
    retired = hospital.get(f"/api/patients/{prior['id']}")
    assert (retired["status"], retired["mergedInto"]) == ("MERGED", survivor["id"])

    def rewritten() -> bool:
        item = worklist_item(hospital, prior_order["id"])
        return item is not None and str(item.PatientID) == "MRN-7001"

    wait_for(rewritten, timeout=10, what="the worklist item under the surviving id")
    assert str(worklist_item(hospital, prior_order["id"]).PatientName) == "KOWALSKI^ANNA"

    # The same message again: its original ACK. Resent under a new control id, or with PID
    # and MRG swapped: AA, nothing changes (the log says so).
    assert hospital.mllp.send(ADT_A40_251) == merged
    resent = with_field(ADT_A40_251, "MSH", 10, "ADT-0003-B")
    assert hospital.send(resent).code == "AA"
    swapped = with_field(
        with_field(
            with_field(ADT_A40_251, "MSH", 10, "ADT-0003-C"), "PID", 3, "MRN-7666^^^GENHOSP^MR"
        ),
        "MRG",
        1,
        "MRN-7001^^^GENHOSP^MR",
    )
    assert hospital.send(swapped).code == "AA"
    assert the_patient(hospital, "MRN-7001")["status"] == "ACTIVE"
    assert hospital.get(f"/api/patients/{prior['id']}")["mergedInto"] == survivor["id"]
    notes = {m["controlId"]: m.get("note") for m in logged(hospital)}
    assert notes["ADT-0003-B"] and notes["ADT-0003-C"]
    [audited] = hospital.get("/api/audit", action="patient.merged")["items"]
    assert audited["actor"] == "hl7:HIS^GENHOSP"
    assert audited["detail"]["cause"] == "HL7 ADT^A40 ADT-0003"
    assert audited["detail"]["order_ids"] == [prior_order["id"]]

    # A new order under the merged-away identifier: AE 204 naming the surviving one.
    late = with_field(with_field(ORM_FOR_MRN_7666, "MSH", 10, "MSG-NW-LATE"), "OBR", 18, "ACC-7667")
    refused = hospital.send(late)
    assert (refused.code, refused.error_code) == ("AE", 204)
    assert refused.error_location.startswith("PID^1^3")
    assert "MRN-7001^^^GENHOSP" in refused.text


def test_a_merge_into_a_merged_patient_follows_the_chain(hospital: Hospital) -> None:
    assert hospital.send(ADT_A01_251).code == "AA"
    assert hospital.send(ORM_FOR_MRN_7666).code == "AA"
    assert hospital.send(ADT_A40_251).code == "AA"  # MRN-7666 into MRN-7001
    third = with_field(ADT_A01_251, "MSH", 10, "ADT-0005")
    assert hospital.send(with_field(third, "PID", 3, "MRN-7005^^^GENHOSP^MR")).code == "AA"
    # MRN-7005 into MRN-7666, which lives on as MRN-7001.
    into_merged = with_field(
        with_field(
            with_field(ADT_A40_251, "MSH", 10, "ADT-0006"), "PID", 3, "MRN-7666^^^GENHOSP^MR"
        ),
        "MRG",
        1,
        "MRN-7005^^^GENHOSP^MR",
    )
    assert hospital.send(into_merged).code == "AA"
    survivor = the_patient(hospital, "MRN-7001")
    assert the_patient(hospital, "MRN-7005")["mergedInto"] == survivor["id"]


def test_a_v23_merge_reads_the_prior_issuer_from_pid(hospital: Hospital) -> None:
    assert hospital.send(ORM_FOR_MRN_7666).code == "AA"
    assert hospital.send(ADT_A40_23).code == "AA"
    assert hospital.order("ACC-7666")["patientId"] == "MRN-7001"
    assert the_patient(hospital, "MRN-7666")["status"] == "MERGED"


def test_an_identifier_change_keeps_the_history(hospital: Hospital) -> None:
    assert hospital.send(ADT_A01_251).code == "AA"
    assert hospital.send(ORM_FOR_MRN_7001).code == "AA"
    record = the_patient(hospital, "MRN-7001")["id"]
    assert hospital.send(ADT_A47_251).code == "AA"
    assert patients(hospital, patientId="MRN-7001") == []
    assert the_patient(hospital, "MRN-7009")["id"] == record
    assert hospital.order("ACC-24-0001")["patientId"] == "MRN-7009"
    again = with_field(ADT_A47_251, "MSH", 10, "ADT-0004-B")
    assert hospital.send(again).code == "AA"  # applied before: nothing to do
    # The new identifier of another patient: AE 205 (they are to be merged instead).
    other = with_field(ADT_A01_251, "MSH", 10, "ADT-0007")
    assert hospital.send(with_field(other, "PID", 3, "MRN-7001^^^GENHOSP^MR")).code == "AA"
    taken = with_field(
        with_field(ADT_A47_251, "MSH", 10, "ADT-0004-C"), "MRG", 1, "MRN-7001^^^GENHOSP^MR"
    )
    ack = hospital.send(taken)
    assert (ack.code, ack.error_code) == ("AE", 205)


LONG = "X" * 70

#: (name, message, ACK code, error code, ERR-2 location prefix).
HOSTILE: list[tuple[str, str, str, int, str]] = [
    ("A40 without MRG", without_segment(ADT_A40_251, "MRG"), "AE", 100, "MRG"),
    ("A40 MRG-1 empty", with_field(ADT_A40_251, "MRG", 1, ""), "AE", 101, "MRG^1^1"),
    (
        "A40 MRG-1 equal to PID-3",
        with_field(ADT_A40_251, "MRG", 1, "MRN-7001^^^GENHOSP^MR"),
        "AE",
        205,
        "MRG^1^1",
    ),
    (
        "A40 MRG-1 without issuer equal to PID-3",
        with_field(ADT_A40_251, "MRG", 1, "MRN-7001"),
        "AE",
        205,
        "MRG^1^1",
    ),
    (
        "A40 unknown prior",
        with_field(ADT_A40_251, "MRG", 1, "MRN-7404^^^GENHOSP"),
        "AE",
        204,
        "MRG^1^1",
    ),
    (
        "A47 unknown prior",
        with_field(ADT_A47_251, "MRG", 1, "MRN-7404^^^GENHOSP"),
        "AE",
        204,
        "MRG^1^1",
    ),
    ("A40 MRG-1 over 64", with_field(ADT_A40_251, "MRG", 1, "M" * 65), "AE", 102, "MRG^1^1"),
    (
        "PID-3 over 64",
        with_field(ADT_A01_251, "PID", 3, "P" * 65 + "^^^GENHOSP"),
        "AE",
        102,
        "PID^1^3",
    ),
    (
        "PID-3.4 over 64",
        with_field(ADT_A01_251, "PID", 3, "MRN-7001^^^" + LONG),
        "AE",
        102,
        "PID^1^3",
    ),
    ("PID-3 only spaces", with_field(ADT_A01_251, "PID", 3, "   ^^^GENHOSP"), "AE", 102, "PID^1^3"),
    (
        "PID-3 raw NUL",
        with_field(ADT_A01_251, "PID", 3, "MRN\x007001^^^GENHOSP"),
        "AE",
        102,
        "PID^1^3",
    ),
    (
        "PID-3 other id over 64",
        with_field(ADT_A01_251, "PID", 3, "MRN-7001^^^G~" + LONG),
        "AE",
        102,
        "PID^1^3",
    ),
    (
        "PID-5 component over 64",
        with_field(ADT_A08_251, "PID", 5, LONG + "^A"),
        "AE",
        102,
        "PID^1^5",
    ),
    (
        "PID-5 escaped backslash",
        with_field(ADT_A08_251, "PID", 5, "A\\E\\B^C"),
        "AE",
        102,
        "PID^1^5",
    ),
    ("PID-5 escaped CR", with_field(ADT_A08_251, "PID", 5, "A\\X0D\\^C"), "AE", 102, "PID^1^5"),
    ("PID-7 not a date", with_field(ADT_A08_251, "PID", 7, "19611305"), "AE", 102, "PID^1^7"),
    ("PID-8 unknown sex", with_field(ADT_A08_251, "PID", 8, "X"), "AE", 103, "PID^1^8"),
    ("no PID", without_segment(ADT_A08_251, "PID"), "AE", 100, "PID"),
    ("no PID-3 id", with_field(ADT_A08_251, "PID", 3, "^^^GENHOSP"), "AE", 101, "PID^1^3"),
    ("MSH-10 over 199", with_field(ADT_A08_251, "MSH", 10, "C" * 250), "AE", 102, "MSH^1^10"),
    ("version 2.6", with_field(ADT_A08_251, "MSH", 12, "2.6"), "AR", 203, "MSH^1^12"),
    ("version 2.2", with_field(ADT_A08_251, "MSH", 12, "2.2"), "AR", 203, "MSH^1^12"),
    ("A02 transfer", with_field(ADT_A08_251, "MSH", 9, "ADT^A02^ADT_A02"), "AR", 201, "MSH^1^9"),
    ("A03 discharge", with_field(ADT_A08_251, "MSH", 9, "ADT^A03"), "AR", 201, "MSH^1^9"),
    ("empty trigger", with_field(ADT_A08_251, "MSH", 9, "ADT"), "AR", 201, "MSH^1^9"),
]


@pytest.mark.parametrize(
    ("message_text", "code", "error_code", "location"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_adt_is_answered_with_the_reason_logged_and_changes_nothing(
    hospital: Hospital, message_text: str, code: str, error_code: int, location: str
) -> None:
    assert hospital.send(ADT_A01_251).code == "AA"
    before = hospital.get("/api/patients")
    if location != "MSH^1^10":  # a control id of its own: not a repeat of the samples
        message_text = with_field(message_text, "MSH", 10, "ADT-HOSTILE")
    ack = hospital.send(message_text)
    assert (ack.code, ack.error_code) == (code, error_code), ack.text
    assert ack.error_location.startswith(location), ack.error_location
    assert ack.text
    assert hospital.get("/api/patients") == before
    refused = logged(hospital)[0]
    assert refused["status"] == ("rejected" if code == "AR" else "error")
    assert refused["errorText"]
    # The connection and the registry go on.
    assert hospital.send(ADT_A08_251).code == "AA"


def test_several_pid_mrg_pairs_merge_each_and_one_bad_pair_changes_nothing(
    hospital: Hospital,
) -> None:
    for number, identifier in enumerate(("MRN-7001", "MRN-7666", "MRN-7667"), start=1):
        registration = with_field(ADT_A01_251, "MSH", 10, f"ADT-R{number}")
        assert (
            hospital.send(with_field(registration, "PID", 3, identifier + "^^^GENHOSP")).code
            == "AA"
        )
    header, pid, mrg = (
        ADT_A40_251.rstrip("\r").split("\r")[0],
        *ADT_A40_251.rstrip("\r").split("\r")[2:4],
    )
    bad = message(header, pid, mrg, pid, "MRG|MRN-7404^^^GENHOSP")
    assert hospital.send(bad).error_code == 204
    assert the_patient(hospital, "MRN-7666")["status"] == "ACTIVE"  # the first pair undone
    both = message(
        with_field(header + "\r", "MSH", 10, "ADT-PAIRS").rstrip("\r"),
        pid,
        mrg,
        pid,
        "MRG|MRN-7667^^^GENHOSP",
    )
    assert hospital.send(both).code == "AA"
    assert the_patient(hospital, "MRN-7666")["status"] == "MERGED"
    assert the_patient(hospital, "MRN-7667")["status"] == "MERGED"
