"""Hostile HL7 over a real MLLP socket, on both databases: values longer than the column or the
worklist item they go to, NUL and control characters (raw or escaped), backslashes DICOM cannot
hold, broken keys. Each is answered AE naming the field (never AR "retry later", which a HIS
would repeat for ever), the refusal is logged, and the next valid order is stored and offered on
the worklist. Nothing is acknowledged AA that the worklist then cannot offer."""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import pytest

from sidecar.worklist.publisher import WorklistPublisher

from hl7_samples import (
    CR,
    OMI_NW_251,
    ORM_NW_23,
    ORM_NW_251,
    ORM_XO_251,
    message,
    with_field,
    without_segment,
)
from hospital import Hospital
from stack import wait_for
from testapp import service_of

LONG = "X" * 70

#: (name, message, ERR-2 location prefix). Every one answered AE 102.
HOSTILE: list[tuple[str, str, str]] = [
    ("PID-3 over 64", with_field(ORM_NW_251, "PID", 3, "P" * 65 + "^^^GENHOSP^MR"), "PID^1^3"),
    ("PID-3 raw NUL", with_field(ORM_NW_251, "PID", 3, "47\x0011^^^GENHOSP^MR"), "PID^1^3"),
    ("PID-3 escaped NUL", with_field(ORM_NW_251, "PID", 3, "47\\X00\\11^^^G^MR"), "PID^1^3"),
    ("PID-3.4 issuer over 64", with_field(ORM_NW_251, "PID", 3, "4711^^^" + LONG), "PID^1^3"),
    ("PID-5 component over 64", with_field(ORM_NW_251, "PID", 5, LONG + "^Jo"), "PID^1^5"),
    ("PID-5 escaped backslash", with_field(ORM_NW_251, "PID", 5, "Doe\\E\\Roe^Jo"), "PID^1^5"),
    ("PID-5 raw control", with_field(ORM_NW_251, "PID", 5, "Doe\x01^Jo"), "PID^1^5"),
    ("PID-5 escaped CR", with_field(ORM_NW_251, "PID", 5, "Doe\\X0D\\^Jo"), "PID^1^5"),
    ("PV1-8 over 194", with_field(ORM_NW_251, "PV1", 8, "1^" + "K" * 200), "PV1^1^8"),
    ("ORC-2 over 64", with_field(ORM_NW_251, "ORC", 2, "P" * 65 + "^HIS"), "ORC^1^2"),
    ("ORC-2 raw NUL", with_field(ORM_NW_251, "ORC", 2, "PLC\x001^HIS"), "ORC^1^2"),
    ("ORC-12 id over 64", with_field(ORM_NW_251, "ORC", 12, "9" * 65 + "^House"), "ORC^1^12"),
    ("ORC-12 name over 324", with_field(ORM_NW_251, "ORC", 12, "9^" + "H" * 400), "ORC^1^12"),
    ("MSH-3 over 99", with_field(ORM_NW_251, "MSH", 3, "H" * 150), "MSH^1^3"),
    ("MSH-3 raw NUL", with_field(ORM_NW_251, "MSH", 3, "H\x00IS"), "MSH^1^3"),
    ("MSH-4 over 64", with_field(ORM_NW_251, "MSH", 4, "F" * 80), "MSH^1^4"),
    ("MSH-10 over 199", with_field(ORM_NW_251, "MSH", 10, "C" * 250), "MSH^1^10"),
    ("MSH-10 raw NUL", with_field(ORM_NW_251, "MSH", 10, "MSG\x00NUL"), "MSH^1^10"),
    ("OBR-4.1 over 64", with_field(ORM_NW_251, "OBR", 4, LONG + "^CT^LOCAL"), "OBR^1^4"),
    ("OBR-4.2 over 64", with_field(ORM_NW_251, "OBR", 4, "CT1^" + LONG + "^L"), "OBR^1^4"),
    ("OBR-18 backslash", with_field(ORM_NW_251, "OBR", 18, "ACC\\E\\1"), "OBR^1^18"),
    ("OBR-31 over 4000", with_field(ORM_NW_251, "OBR", 31, "R^" + "r" * 4100), "OBR^1^31"),
    ("PID-3.1 only spaces", with_field(ORM_NW_251, "PID", 3, "   ^^^GENHOSP^MR"), "PID^1^3"),
    ("PID-5 raw C1 control", with_field(ORM_NW_251, "PID", 5, "Doe\x85^Jo"), "PID^1^5"),
    ("PID-5 escaped C1 (UTF-8)", with_field(ORM_NW_251, "PID", 5, "Doe\\XC285\\^Jo"), "PID^1^5"),
    ("PID-5 escaped C1 (Latin-1)", with_field(ORM_NW_251, "PID", 5, "D\\XEDA080\\^J"), "PID^1^5"),
    ("PID-5 line separator", with_field(ORM_NW_251, "PID", 5, "Doe\u2028^Jo"), "PID^1^5"),
    ("MSH-10 of two components", with_field(ORM_NW_251, "MSH", 10, "K^1"), "MSH^1^10"),
    ("TQ1-7 past 9999 locally", with_field(ORM_NW_251, "TQ1", 7, "99991231233000+0000"), "TQ1^1^7"),
    ("TQ1-7 beyond UTC", with_field(ORM_NW_251, "TQ1", 7, "99991231235959-1400"), "TQ1^1^7"),
    ("TQ1-7 year 1, local", with_field(ORM_NW_251, "TQ1", 7, "00010101000000"), "TQ1^1^7"),
    ("TQ1-7 before 1900", with_field(ORM_NW_251, "TQ1", 7, "18991231120000+0000"), "TQ1^1^7"),
    (
        "OBR-27.4 year 9999",
        with_field(ORM_NW_23, "OBR", 27, "^^^99991231233000+0000^^R"),
        "OBR^1^27",
    ),
    (
        "NTE raw NUL (a field not kept)",
        message(*ORM_NW_251.rstrip(CR).split(CR), "NTE|1|P|binary\x00data"),
        "NTE^1^3",
    ),
]


class Orders:
    """Valid new orders, each with its own control id, accession and placer number."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def next(self) -> tuple[str, str]:
        n = next(self._numbers)
        accession = f"ACC-OK-{n:04d}"
        text = with_field(ORM_NW_251, "MSH", 10, f"MSG-OK-{n:04d}")
        text = with_field(text, "ORC", 2, f"PLC-OK-{n}^HIS")
        text = with_field(text, "OBR", 2, f"PLC-OK-{n}^HIS")
        text = with_field(text, "OBR", 18, accession)
        return without_segment(text, "ZDS"), accession


def offered(hospital: Hospital, order_id: int) -> bool:
    worklist = service_of(hospital.sidecar.app, WorklistPublisher)
    return str(order_id) in worklist.directory.keys()  # noqa: SIM118 (not a dict)


def test_hostile_values_are_refused_ae_naming_the_field_and_the_next_order_goes_through(
    hospital: Hospital,
) -> None:
    orders = Orders()
    mismatches: list[str] = []
    for number, (name, text, location) in enumerate(HOSTILE):
        # Each its own control id (a control id used twice is another refusal, tested below).
        hostile = text if location == "MSH^1^10" else with_field(text, "MSH", 10, f"H-{number}")
        before = hospital.get("/api/hl7/messages")["total"]
        ack = hospital.send(hostile)
        got = (ack.code, ack.error_code, ack.error_location.startswith(location))
        if got != ("AE", 102, True):
            mismatches.append(
                f"{name}: {ack.code} {ack.error_code} {ack.error_location} {ack.text}"
            )
        if hospital.get("/api/hl7/messages")["total"] != before + 1:
            mismatches.append(f"{name}: the refusal was not logged")
        valid, accession = orders.next()
        follow_up = hospital.send(valid)
        if follow_up.code != "AA":
            mismatches.append(f"after {name}: a valid order got {follow_up.code} {follow_up.text}")
            continue
        order_id: int = hospital.order(accession)["id"]
        wait_for(partial(offered, hospital, order_id), timeout=10, what=name)
    assert not mismatches, "\n".join(mismatches)
    assert hospital.get("/api/imaging-orders")["total"] == len(HOSTILE)


def test_every_accepted_order_is_on_the_worklist(hospital: Hospital) -> None:
    """What the AA promises: an order the HIS was told is accepted is offered to modalities.
    Values at the very limits of what the worklist holds are accepted and offered."""
    at_the_limits = with_field(ORM_NW_251, "PID", 5, "L" * 60 + "^Jo")  # 63 of the 64 a PN holds
    at_the_limits = with_field(at_the_limits, "PID", 3, "P" * 64 + "^^^" + "I" * 64 + "^MR")
    at_the_limits = with_field(at_the_limits, "OBR", 4, "C" * 64 + "^" + "D" * 64 + "^L")
    ack = hospital.send(at_the_limits)
    assert ack.code == "AA", ack.text
    order = hospital.order("ACC-24-0001")
    assert order["patientId"] == "P" * 64
    wait_for(lambda: offered(hospital, order["id"]), timeout=10, what="the order offered")


def test_a_repeated_control_id_with_another_message_is_refused_ae_205(hospital: Hospital) -> None:
    first = hospital.mllp.send(ORM_NW_251)
    # The same message sent again, stamped anew by the sender's engine: the original answer.
    resent = with_field(ORM_NW_251, "MSH", 7, "20240301101600+0100")
    assert hospital.mllp.send(resent) == first
    # Another order under the same control id: never the original AA for it.
    other = with_field(ORM_NW_251, "OBR", 18, "ACC-OTHER")
    other = with_field(without_segment(other, "ZDS"), "ORC", 2, "PLC-OTHER^HIS")
    ack = hospital.send(other)
    assert (ack.code, ack.error_code) == ("AE", 205)
    assert ack.error_location.startswith("MSH^1^10")
    assert hospital.get("/api/imaging-orders")["total"] == 1
    # Refused, logged, and refused the same way when it is sent again.
    assert hospital.send(other).error_code == 205
    logged = hospital.get("/api/hl7/messages", direction="in")["items"]
    assert sorted(m["ackCode"] for m in logged) == ["AA", "AE", "AE"]
    # And the original is still answered with its AA.
    assert hospital.mllp.send(ORM_NW_251) == first


def test_a_refused_message_repeated_gets_its_first_answer(hospital: Hospital) -> None:
    hostile = with_field(ORM_NW_251, "PID", 5, LONG + "^Jo")
    first = hospital.mllp.send(hostile)
    assert hospital.mllp.send(hostile) == first
    assert hospital.get("/api/hl7/messages")["total"] == 1


@pytest.mark.parametrize(
    ("field", "rows"),
    # An unusable sender is stored made printable: a resend is still recognised. An unusable
    # control id cannot key anything: each copy is logged under a unique key of its own.
    [(3, 1), (10, 2)],
    ids=["MSH-3", "MSH-10"],
)
def test_unusable_header_keys_are_logged_storable(
    hospital: Hospital, field: int, rows: int
) -> None:
    hostile = with_field(ORM_NW_251, "MSH", field, "K\x00" + "K" * 300)
    for _ in range(2):
        ack = hospital.send(hostile)
        assert (ack.code, ack.error_code) == ("AE", 102)
    logged: list[dict[str, Any]] = hospital.get("/api/hl7/messages")["items"]
    assert len(logged) == rows
    assert all("\x00" not in m["controlId"] + m["sender"] for m in logged)


def test_an_unknown_modality_in_ipc_5_is_refused_naming_ipc_5(hospital: Hospital) -> None:
    ack = hospital.send(with_field(OMI_NW_251, "IPC", 5, "ZZ"))
    assert (ack.code, ack.error_code) == ("AE", 103)
    assert ack.error_location.startswith("IPC^1^5"), ack.error_location


def test_a_change_to_a_blank_patient_id_is_refused_and_the_order_keeps_its_step(
    hospital: Hospital,
) -> None:
    """An XO is checked as a new order is: the order stays as it was, offered."""
    assert hospital.send(ORM_NW_251).code == "AA"
    order = hospital.order("ACC-24-0001")
    wait_for(partial(offered, hospital, order["id"]), timeout=10, what="the order offered")
    blank = with_field(ORM_XO_251, "PID", 3, "  ^^^GENHOSP^MR")
    ack = hospital.send(blank)
    assert (ack.code, ack.error_code) == ("AE", 102), ack.text
    assert ack.error_location.startswith("PID^1^3")
    after = hospital.order("ACC-24-0001")
    assert (after["patientId"], after["status"]) == (order["patientId"], order["status"])
    assert offered(hospital, order["id"])
