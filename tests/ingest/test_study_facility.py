"""The facility a study was done at, against a real Orthanc: its order's, else that of the
modality that sent it (MODALITY_FACILITIES, by the calling AE title Orthanc records), else none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import Stack

pytestmark = pytest.mark.orthanc


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    running = Stack(tmp_path, database_url)
    running.settings = running.settings.model_copy(
        update={"modality_facilities": "EASTCT=EAST-HOSP, WESTMR = WEST-HOSP"}
    )
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


def _send(
    stack: Stack, directory: Path, calling_aet: str, patient_id: str, accession: str | None = None
) -> str:
    generated = make_study(
        directory,
        series_count=1,
        instances_per_series=2,
        patient_id=patient_id,
        accession_number=accession,
    )
    assert storescu_dcmtk(
        generated.files, *stack.dicom_address, calling_aet=calling_aet
    ).all_success
    return generated.study_instance_uid


def test_a_study_takes_its_orders_facility_else_its_modalitys(stack: Stack, tmp_path: Path) -> None:
    order = {
        "patientId": "FAC-1",
        "patientName": "DOE^JANE",
        "modality": "CT",
        "procedureDescription": "CT head",
        "facilityId": "NORTH-HOSP",
    }
    ordered = stack.api("POST", "/api/imaging-orders", json=order)
    assert ordered.status_code == 201, ordered.text
    accession = ordered.json()["accessionNumber"]

    from_east = _send(stack, tmp_path / "east", "EASTCT", "FAC-2")
    from_west = _send(stack, tmp_path / "west", "WESTMR", "FAC-3")
    unknown = _send(stack, tmp_path / "unknown", "OTHERSCU", "FAC-4")
    # Sent by the eastern CT, but for the northern hospital's order: the order's facility.
    ordered_study = _send(stack, tmp_path / "ordered", "EASTCT", "FAC-1", accession)
    facilities = {
        uid: stack.wait_for_study(uid, instances=2)["facilityId"]
        for uid in (from_east, from_west, unknown, ordered_study)
    }
    assert facilities == {
        from_east: "EAST-HOSP",
        from_west: "WEST-HOSP",
        unknown: None,
        ordered_study: "NORTH-HOSP",
    }


def test_a_malformed_modality_facility_list_stops_the_start() -> None:
    from sidecar.core.settings import Settings

    for value in ("EASTCT", "=EAST", "EASTCT=", "A" * 17 + "=EAST", "CT=" + "F" * 65):
        with pytest.raises(ValueError, match="MODALITY_FACILITIES"):
            Settings(modality_facilities=value)
