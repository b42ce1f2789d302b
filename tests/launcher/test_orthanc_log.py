"""Orthanc's log with patient data withheld (sidecar.launcher.orthanc.copy_redacted): the lines
Orthanc really writes, with the values a PatientID may hold (an LO takes commas, semicolons,
spaces, "=", anything but backslash and control characters; a malformed file, even those)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread

from sidecar.launcher.orthanc import (
    OrthancLayout,
    OrthancProcess,
    copy_redacted,
    redact_patient_data,
)

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port, wait_for

# DicomMap::LogMissingTagsForStore, Orthanc 1.10.1 (Debian's), then 1.12's with the thread name.
REFUSED = (
    b"E1130 11:38:29.123456 DicomMap.cpp:1015] Store has failed because required tags "
    b"(StudyInstanceUID) are missing for the following instance: PatientID="
)
REFUSED_1_12 = REFUSED.replace(b".123456 ", b".123456 DICOM-3 ").replace(b":1015", b":1283")
UIDS = b", SeriesInstanceUID=1.2.3.4, SOPInstanceUID=1.2.3.4.5"
HOSTILE_IDS = {
    "comma": b"CAN,ARYPID",
    "semicolon": b"CANARY2;X",
    "spaces": b"CANARY 3 WITH SPACES",
    "equals": b"CAN=ARY4",
    "uid-lookalike": b"CAN, SeriesInstanceUID=ARY5",
    "carriage-return": b"CANARY6\rX",
    "utf-8": "CANÄRY7".encode(),
}


@pytest.mark.parametrize("prefix", [REFUSED, REFUSED_1_12], ids=["1.10", "1.12"])
@pytest.mark.parametrize("patient_id", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""], ids=["lf", "crlf", "last"])
def test_the_refused_instance_s_patient_id_is_withheld_to_the_end_of_its_line(
    prefix: bytes, patient_id: bytes, ending: bytes
) -> None:
    # Nothing after "PatientID=" can be told apart from the value: the whole rest goes.
    line = prefix + patient_id + UIDS + ending
    assert redact_patient_data(line) == prefix + b"(withheld)" + ending


def test_without_a_patient_id_the_line_is_kept() -> None:
    for line in (
        b"E1130 11:38:29.123456 DicomMap.cpp:1015] Store has failed because required tags "
        b"(PatientID, StudyInstanceUID) are missing for the following instance: "
        b"SeriesInstanceUID=1.2.3.4, SOPInstanceUID=1.2.3.4.5\n",
        b"E1130 11:38:29.123456 DicomMap.cpp:1011] Store has failed because all the required "
        b"tags (PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) are missing "
        b"(is it a DICOMDIR file?)\n",
        b"W1130 11:38:20.000001 main.cpp:1925] Orthanc has started\n",
    ):
        assert redact_patient_data(line) == line


@pytest.mark.parametrize(
    "attribute",
    [b"PatientName", b"PatientBirthDate", b"OtherPatientIDs", b"AccessionNumber"],
)
def test_other_patient_attributes_are_withheld_the_same_way(attribute: bytes) -> None:
    line = b"W1130 11:38:29.123456 X.cpp:1] a: " + attribute + b"=DOE^JANE, OF; X=Y\n"
    assert redact_patient_data(line) == (
        b"W1130 11:38:29.123456 X.cpp:1] a: " + attribute + b"=(withheld)\n"
    )


def test_quoted_json_values_are_withheld_alone() -> None:
    line = b'T1130 x] {"PatientName": "DOE^\\"JANE\\", X", "Modality": "CT", "PatientID":"A,B"}\n'
    assert redact_patient_data(line) == (
        b'T1130 x] {"PatientName": "(withheld)", "Modality": "CT", "PatientID":"(withheld)"}\n'
    )


def test_a_json_value_naming_an_attribute_is_withheld_whole() -> None:
    line = b'T1130 x] {"PatientName": "CANARY PatientID=X", "Modality": "CT"}\n'
    assert redact_patient_data(line) == (
        b'T1130 x] {"PatientName": "(withheld)", "Modality": "CT"}\n'
    )


def test_a_patient_id_over_several_lines_is_withheld_up_to_orthanc_s_next_line() -> None:
    # A malformed PatientID with line breaks: its continuation does not start as Orthanc's lines
    # do (severity, date, time), and is withheld with it.
    output = io.BytesIO(
        REFUSED + b"CANARY8\nMORE, CANARY9\n\nEND" + UIDS + b"\n"
        b"W1130 11:38:30.000000 main.cpp:1] next\n"
        b"E1130 11:38:31.000000 DicomMap.cpp:1015] ... instance: SeriesInstanceUID=1.2\n"
        b"not after a withheld value: kept\n"
    )
    log = io.BytesIO()
    copy_redacted(output, log)
    assert log.getvalue().splitlines(keepends=True) == [
        REFUSED + b"(withheld)\n",
        b"(withheld)\n",
        b"(withheld)\n",
        b"(withheld)\n",
        b"W1130 11:38:30.000000 main.cpp:1] next\n",
        b"E1130 11:38:31.000000 DicomMap.cpp:1015] ... instance: SeriesInstanceUID=1.2\n",
        b"not after a withheld value: kept\n",
    ]


@pytest.mark.orthanc
def test_orthanc_s_log_withholds_a_refused_instance_s_patient_id_whole(tmp_path: Path) -> None:
    """The real line, from Debian's Orthanc: an instance without StudyInstanceUID, refused."""
    patient_ids = ["CAN,ARYPID", "CANARY2;X", "CANARY 3=X"]
    files = []
    for number, patient_id in enumerate(patient_ids):
        study = make_study(
            tmp_path / f"dicom{number}",
            series_count=1,
            instances_per_series=1,
            patient_id=patient_id,
        )
        broken = dcmread(study.files[0])
        del broken.StudyInstanceUID
        broken.save_as(study.files[0], enforce_file_format=True)
        files.append(study.files[0])
    orthanc = OrthancProcess(
        OrthancLayout(
            work_dir=tmp_path / "orthanc",
            http_port=free_port(),
            dicom_port=free_port(),
            with_plugin=False,
        )
    )
    orthanc.start()
    try:
        result = storescu_dcmtk(
            files, "127.0.0.1", orthanc.layout.dicom_port, "ORTHANC", check=False
        )
        assert all(status not in (None, 0) for status in result.statuses), result.statuses

        def refusals() -> list[str] | None:
            lines = orthanc.log_path.read_text(errors="replace").splitlines()
            found = [line for line in lines if "required tags" in line]
            return found if len(found) >= len(files) else None

        wait_for(refusals, timeout=10, what="Orthanc's refusals in its log")
    finally:
        orthanc.stop()  # the log copied to its end
    text = orthanc.log_path.read_text(errors="replace")
    for line in text.splitlines():
        if "required tags" in line:
            assert line.endswith("for the following instance: PatientID=(withheld)"), line
    for leaked in ("ARYPID", "CANARY", "CAN,", "2;X", "3=X"):
        assert leaked not in text
