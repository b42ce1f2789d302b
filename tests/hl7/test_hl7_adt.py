"""ADT messages to AdtMessage (hl7/adt.py): the events and what each does, the PID/MRG pairs,
the refusals with their ACK codes and locations, and hl7apy reading PID-3 and MRG-1 the same
way (the reference, as for orders)."""

from __future__ import annotations

from datetime import date

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hl7.adt import AdtAction, parse_adt_message
from hl7.errors import Hl7Error

import hl7_samples as samples

ADT_SAMPLES = {
    "ADT_A01_251": samples.ADT_A01_251,
    "ADT_A08_251": samples.ADT_A08_251,
    "ADT_A40_251": samples.ADT_A40_251,
    "ADT_A40_23": samples.ADT_A40_23,
    "ADT_A47_251": samples.ADT_A47_251,
}


def test_a01_registers_with_every_identifier() -> None:
    message = parse_adt_message(samples.ADT_A01_251)
    assert message.action is AdtAction.REGISTER
    (change,) = message.changes
    assert change.patient.identifier.id == "MRN-7001"
    assert change.patient.identifier.assigning_authority.name == "GENHOSP"
    assert change.patient.name.family_name == "KOWALSKI"
    assert change.patient.birth_date == date(1961, 4, 5)
    assert change.other_identifiers == (("PP-7001", "PASSPORT", "PPN"),)
    assert change.prior is None


@pytest.mark.parametrize(
    ("trigger", "action"),
    [
        ("A01", AdtAction.REGISTER),
        ("A04", AdtAction.REGISTER),
        ("A05", AdtAction.REGISTER),
        ("A08", AdtAction.UPDATE),
        ("A31", AdtAction.UPDATE),
    ],
)
def test_registration_and_update_events(trigger: str, action: AdtAction) -> None:
    text = samples.with_field(samples.ADT_A08_251, "MSH", 9, f"ADT^{trigger}")
    assert parse_adt_message(text).action is action


@pytest.mark.parametrize("trigger", ["A40", "A34", "A39"])
def test_merges_read_the_prior_from_mrg(trigger: str) -> None:
    text = samples.with_field(samples.ADT_A40_251, "MSH", 9, f"ADT^{trigger}")
    message = parse_adt_message(text)
    assert message.action is AdtAction.MERGE
    (change,) = message.changes
    assert change.prior is not None
    assert (change.prior.id, change.prior.assigning_authority.name) == ("MRN-7666", "GENHOSP")


def test_a_v23_merge_and_an_identifier_change() -> None:
    (change,) = parse_adt_message(samples.ADT_A40_23).changes
    assert change.prior is not None
    assert (change.prior.id, change.prior.assigning_authority.name) == ("MRN-7666", "")
    message = parse_adt_message(samples.ADT_A47_251)
    assert message.action is AdtAction.CHANGE_IDENTIFIER
    assert message.changes[0].prior is not None
    assert message.changes[0].prior.id == "MRN-7001"


def test_each_pid_takes_the_mrg_that_follows_it() -> None:
    lines = samples.ADT_A40_251.rstrip("\r").split("\r")
    text = samples.message(*lines, "PID|2||MRN-7002^^^GENHOSP", "MRG|MRN-7668^^^GENHOSP")
    changes = parse_adt_message(text).changes
    assert [(c.patient.identifier.id, c.prior.id if c.prior else "") for c in changes] == [
        ("MRN-7001", "MRN-7666"),
        ("MRN-7002", "MRN-7668"),
    ]
    # A second PID without its own MRG: the first PID's MRG does not serve it.
    missing = samples.message(*lines, "PID|2||MRN-7002^^^GENHOSP")
    with pytest.raises(Hl7Error) as refused:
        parse_adt_message(missing)
    assert str(refused.value).startswith("AE 100")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (samples.with_field(samples.ADT_A08_251, "MSH", 9, "ADT^A02"), "AR 201 at MSH-9.2"),
        (samples.with_field(samples.ADT_A08_251, "MSH", 9, "ORM^O01"), "AR 200 at MSH-9.1"),
        (samples.with_field(samples.ADT_A08_251, "MSH", 12, "2.6"), "AR 203 at MSH-12"),
        (samples.with_field(samples.ADT_A08_251, "MSH", 10, ""), "AE 101 at MSH-10"),
        (samples.with_field(samples.ADT_A08_251, "MSH", 7, "2024-03-01"), "AE 102 at MSH-7"),
        (samples.without_segment(samples.ADT_A08_251, "PID"), "AE 100 at PID"),
        (samples.without_segment(samples.ADT_A40_251, "MRG"), "AE 100 at MRG"),
        (samples.with_field(samples.ADT_A40_251, "MRG", 1, "^^^GENHOSP"), "AE 101 at MRG-1"),
        (samples.with_field(samples.ADT_A08_251, "PID", 3, "^^^GENHOSP"), "AE 101 at PID-3"),
        (samples.with_field(samples.ADT_A08_251, "PID", 7, "1961"), "AE 102 at PID-7"),
    ],
)
def test_refusals_name_the_code_and_the_field(text: str, expected: str) -> None:
    with pytest.raises(Hl7Error) as refused:
        parse_adt_message(text)
    assert str(refused.value).startswith(expected)


@pytest.mark.parametrize("name", list(ADT_SAMPLES))
def test_hl7apy_reads_pid_3_and_mrg_1_the_same_way(name: str) -> None:
    text = ADT_SAMPLES[name]
    message = parse_adt_message(text)
    theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    segments = {segment.name: segment for segment in theirs.children}
    pid_3 = segments["PID"].pid_3[0].to_er7().split("^")
    (change,) = message.changes
    assert change.patient.identifier.id == pid_3[0]
    assert change.patient.identifier.assigning_authority.name == pid_3[3]
    assert change.patient.name.family_name == segments["PID"].pid_5[0].to_er7().split("^")[0]
    if change.prior is not None:
        mrg_1 = [*segments["MRG"].mrg_1[0].to_er7().split("^"), "", "", ""]
        assert (change.prior.id, change.prior.assigning_authority.name) == (mrg_1[0], mrg_1[3])
