"""The code sequences and station name of a worklist item (the procedure catalog's values, or
the order's own), as DICOM writes them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from sidecar.worklist.items import WorklistItem, worklist_dataset

PLAIN = WorklistItem(
    key="1",
    accession_number="ACC1",
    requested_procedure_id="RP1",
    requested_procedure_description="XR chest 2 views",
    study_instance_uid="1.2.3.4",
    patient_id="P1",
    issuer_of_patient_id="",
    patient_name="DOE^JOHN",
    patient_birth_date=None,
    patient_sex="M",
    referring_physician="",
    modality="DX",
    scheduled_station_aet="DX01",
    scheduled_start=datetime(2024, 6, 3, 8, 0, tzinfo=UTC),
    step_description="XR chest 2 views",
    step_id="ACC1",
)


def test_an_item_carries_its_codes_and_station_name() -> None:
    item = dataclasses.replace(
        PLAIN,
        procedure_code="71020",
        procedure_coding_system="C4",
        protocol_code="CHEST-PA-LAT",
        scheduled_station_name="DX ROOM 1",
    )
    ds = worklist_dataset(item, UTC)
    (requested,) = ds.RequestedProcedureCodeSequence
    assert (requested.CodeValue, requested.CodingSchemeDesignator) == ("71020", "C4")
    assert requested.CodeMeaning == "XR chest 2 views"
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationName == "DX ROOM 1"
    (protocol,) = step.ScheduledProtocolCodeSequence
    assert (protocol.CodeValue, protocol.CodingSchemeDesignator) == ("CHEST-PA-LAT", "99LOCAL")


def test_a_code_longer_than_a_code_value_goes_in_long_code_value() -> None:
    item = dataclasses.replace(PLAIN, procedure_code="RAD-CHEST-2VIEWS-PA-LAT")
    (requested,) = worklist_dataset(item, UTC).RequestedProcedureCodeSequence
    assert "CodeValue" not in requested
    assert requested.LongCodeValue == "RAD-CHEST-2VIEWS-PA-LAT"
    assert requested.CodingSchemeDesignator == "99LOCAL"


def test_an_item_without_codes_has_no_code_sequences() -> None:
    ds = worklist_dataset(PLAIN, UTC)
    assert "RequestedProcedureCodeSequence" not in ds
    assert "ScheduledProtocolCodeSequence" not in ds.ScheduledProcedureStepSequence[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("procedure_code", "A\\B"), ("protocol_code", "P" * 17), ("scheduled_station_name", "S" * 17)],
)
def test_an_item_refuses_codes_dicom_cannot_hold(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(PLAIN, **{field: value})  # type: ignore[arg-type]
