"""The modality worklist against the real Orthanc (Debian package) with the plugin: C-FIND with
dcmtk's findscu and with pynetdicom, items written by sidecar.worklist.directory, no sidecar
running."""

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydicom.dataset import Dataset

from sidecar.core.modalities import RegisteredModality
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess
from sidecar.worklist.directory import WorklistDirectory
from sidecar.worklist.items import WorklistItem, worklist_dataset

from findscu import (
    IN_STEP,
    QUERIES,
    TOP_LEVEL,
    find_dcmtk,
    find_pynetdicom,
    findscu_keys,
    mwl_query,
)
from stack import free_port

pytestmark = pytest.mark.orthanc

BRUSSELS = ZoneInfo("Europe/Brussels")


def local(day: int, hour: int) -> datetime:
    return datetime(2024, 6, day, hour, 0, tzinfo=BRUSSELS)


def item(key: str, patient: str, modality: str, station: str, start: datetime) -> WorklistItem:
    return WorklistItem(
        key=key,
        accession_number=f"ACC{key}",
        requested_procedure_id=f"RP{key}",
        requested_procedure_description=f"{modality} procedure {key}",
        study_instance_uid=f"1.2.826.0.1.3680043.10.2.{key}",
        patient_id=patient,
        issuer_of_patient_id="HOSPITAL",
        patient_name="MÜLLER^JÜRGEN" if patient == "PAT1" else f"DOE^{patient}",
        patient_birth_date=None if key == "4" else datetime(1960, 1, int(key)).date(),
        patient_sex="M" if key != "3" else "F",
        referring_physician="HOUSE^GREGORY",
        modality=modality,
        scheduled_station_aet=station,
        scheduled_start=start,
        step_description=f"step {key}",
        step_id=f"SPS{key}",
        priority="STAT" if key == "2" else "ROUTINE",
    )


ITEMS = [
    item("1", "PAT1", "CT", "CT01", local(3, 8)),
    item("2", "PAT1", "MR", "MR01", local(3, 10)),
    item("3", "PAT2", "CT", "CT02", local(4, 9)),
    item("4", "PAT3", "CT", "CT01", local(5, 23)),
    item("5", "PAT4", "US", "", local(3, 14)),
]
BY_KEY = {i.key: i for i in ITEMS}


def keys_of(answers: list[Dataset]) -> list[str]:
    """The items' keys (accession numbers are "ACC" + key), sorted, duplicates kept."""
    return sorted(str(a.AccessionNumber).removeprefix("ACC") for a in answers)


def start_orthanc(work: Path, worklist_dir: Path, **changes: Any) -> OrthancProcess:
    orthanc = OrthancProcess(
        OrthancLayout(
            work_dir=work,
            http_port=free_port(),
            dicom_port=free_port(),
            worklist_dir=worklist_dir,
            **changes,
        )
    )
    orthanc.start()
    return orthanc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """Orthanc with the plugin serving ITEMS; no sidecar anywhere (no URL, no token)."""
    work = tmp_path_factory.mktemp("worklist")
    WorklistDirectory(work / "worklists", BRUSSELS).replace_all(ITEMS)
    orthanc = start_orthanc(work / "orthanc", work / "worklists")
    yield orthanc
    orthanc.stop()


@pytest.mark.parametrize("shape", QUERIES)
def test_pynetdicom_queries_return_the_right_items(served: OrthancProcess, shape: str) -> None:
    top, step, expected = QUERIES[shape]
    answers, final = find_pynetdicom(served.layout.dicom_port, mwl_query(top, step))
    assert final == 0x0000
    assert keys_of(answers) == sorted(expected)


@pytest.mark.parametrize("shape", QUERIES)
def test_findscu_queries_return_the_right_items(
    served: OrthancProcess, shape: str, tmp_path: Path
) -> None:
    top, step, expected = QUERIES[shape]
    answers = find_dcmtk(served.layout.dicom_port, findscu_keys(top, step), tmp_path / "rsp")
    assert keys_of(answers) == sorted(expected)


def assert_same_attributes(answer: Dataset, source: WorklistItem) -> None:
    expected = worklist_dataset(source, BRUSSELS)
    for keyword in TOP_LEVEL:
        assert str(answer[keyword].value) == str(expected[keyword].value), keyword
    (step,) = answer.ScheduledProcedureStepSequence
    (expected_step,) = expected.ScheduledProcedureStepSequence
    for keyword in IN_STEP:
        assert str(step[keyword].value) == str(expected_step[keyword].value), keyword


@pytest.mark.parametrize("key", ["1", "2", "4", "5"])  # non-ASCII name, STAT, no birth date, no AET
def test_pynetdicom_answer_carries_every_attribute(served: OrthancProcess, key: str) -> None:
    query = mwl_query({"AccessionNumber": f"ACC{key}"}, {})
    (answer,), _ = find_pynetdicom(served.layout.dicom_port, query)
    assert_same_attributes(answer, BY_KEY[key])


def test_findscu_answer_carries_every_attribute(served: OrthancProcess, tmp_path: Path) -> None:
    keys = findscu_keys({"PatientID": "PAT1", "SpecificCharacterSet": ""}, {"Modality": "CT"})
    (answer,) = find_dcmtk(served.layout.dicom_port, keys, tmp_path / "rsp")
    assert_same_attributes(answer, BY_KEY["1"])
    assert str(answer.PatientName) == "MÜLLER^JÜRGEN"


def test_withdrawn_and_published_items_show_up_at_the_next_c_find(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path / "worklists", BRUSSELS)
    directory.replace_all(ITEMS)
    orthanc = start_orthanc(tmp_path / "orthanc", tmp_path / "worklists")
    port = orthanc.layout.dicom_port
    universal = mwl_query({}, {})
    try:
        assert keys_of(find_pynetdicom(port, universal)[0]) == sorted(BY_KEY)

        directory.withdraw("3")  # cancelled
        directory.publish(item("6", "PAT5", "CT", "CT02", local(4, 11)))
        directory.publish(item("1", "PAT1", "CT", "CT02", local(3, 8)))  # moved to CT02

        assert keys_of(find_pynetdicom(port, universal)[0]) == ["1", "2", "4", "5", "6"]
        on_ct02, _ = find_pynetdicom(port, mwl_query({}, {"ScheduledStationAETitle": "CT02"}))
        assert keys_of(on_ct02) == ["1", "6"]
    finally:
        orthanc.stop()


def test_worklist_survives_an_orthanc_restart_and_changes_made_meanwhile(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path / "worklists", BRUSSELS)
    directory.replace_all(ITEMS)
    orthanc = start_orthanc(tmp_path / "orthanc", tmp_path / "worklists")
    try:
        assert len(find_pynetdicom(orthanc.layout.dicom_port, mwl_query({}, {}))[0]) == 5
        orthanc.kill()
        directory.withdraw("2")  # while Orthanc is down
        orthanc.start()

        answers, final = find_pynetdicom(orthanc.layout.dicom_port, mwl_query({}, {}))
        assert final == 0x0000
        assert keys_of(answers) == ["1", "3", "4", "5"]
    finally:
        orthanc.stop()


def test_worklist_answers_while_the_configured_sidecar_is_down(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path / "worklists", BRUSSELS).replace_all(ITEMS)
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        tmp_path / "worklists",
        sidecar_url="http://127.0.0.1:9",  # nothing listens there
        plugin_token="a-token-for-a-sidecar-that-is-down",
    )
    try:
        answers, final = find_pynetdicom(
            orthanc.layout.dicom_port, mwl_query({"AccessionNumber": "ACC2"}, {})
        )
        assert (keys_of(answers), final) == (["2"], 0x0000)
    finally:
        orthanc.stop()


# Query shapes beyond the four above: wildcards, lists, open ranges, case, empty sequences. Both
# mechanisms must answer each alike: this checks the plugin's pre-filter against Orthanc itself.
DIFFERENTIAL: list[tuple[dict[str, str], dict[str, str] | None]] = [
    ({"AccessionNumber": "ACC*"}, {}),
    ({"AccessionNumber": "acc1"}, {}),
    ({"AccessionNumber": "ACC1\\ACC4"}, {}),
    ({"AccessionNumber": "ACC?"}, {"Modality": "CT"}),
    ({"PatientID": "PAT1\\PAT3"}, {"Modality": "CT\\US"}),
    ({"PatientID": "PAT1"}, {"ScheduledStationAETitle": "MR01"}),
    ({"PatientName": "müller*"}, {}),
    ({}, {"ScheduledProcedureStepStartDate": "20240604-"}),
    ({}, {"ScheduledProcedureStepStartDate": "-20240603"}),
    ({}, {"ScheduledProcedureStepStartDate": "20240605"}),
    ({}, {"ScheduledProcedureStepStartDate": "20240605-20240603"}),
    ({}, {"ScheduledStationAETitle": "CT*"}),
    ({}, {"ScheduledStationAETitle": "CT01\\"}),
    ({}, {"Modality": "ct"}),
    ({"AccessionNumber": "ACC3"}, None),  # no step sequence in the query at all
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # "ct" on purpose
def test_plugin_answers_like_the_modality_worklists_plugin(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path / "worklists", BRUSSELS).replace_all(ITEMS)
    ours = start_orthanc(tmp_path / "ours", tmp_path / "worklists")
    theirs = start_orthanc(
        tmp_path / "theirs",
        tmp_path / "worklists",
        worklist_mechanism="modality-worklists",
        with_plugin=False,
    )
    try:
        for top, step in DIFFERENTIAL:
            query = mwl_query(top, step or {})
            if step is None:
                del query.ScheduledProcedureStepSequence
            expected, expected_final = find_pynetdicom(theirs.layout.dicom_port, query)
            answers, final = find_pynetdicom(ours.layout.dicom_port, query)
            assert (keys_of(answers), final) == (keys_of(expected), expected_final), (top, step)
    finally:
        ours.stop()
        theirs.stop()


def test_non_latin1_names_need_orthanc_default_encoding_utf8(tmp_path: Path) -> None:
    # Orthanc 1.10.1 re-encodes every worklist answer to its DefaultEncoding (Latin1 unless set),
    # whatever the file and the query say; characters outside Latin-1 are dropped.
    name = "ŁUKASIEWICZ^ZOË=Λουκασιέβιτς"
    source = dataclasses.replace(item("7", "PAT7", "CT", "CT01", local(6, 9)), patient_name=name)
    WorklistDirectory(tmp_path / "worklists", BRUSSELS).replace_all([source])
    orthanc = start_orthanc(
        tmp_path / "orthanc", tmp_path / "worklists", extra={"DefaultEncoding": "Utf8"}
    )
    try:
        (answer,), _ = find_pynetdicom(orthanc.layout.dicom_port, mwl_query({}, {}))
        assert answer.SpecificCharacterSet == "ISO_IR 192"
        assert str(answer.PatientName) == name
    finally:
        orthanc.stop()


def test_worklist_can_be_limited_to_registered_modalities(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path / "worklists", BRUSSELS).replace_all(ITEMS)
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        tmp_path / "worklists",
        worklist_any_ae=False,
        modalities=(RegisteredModality("CT01", "127.0.0.1", 104),),
    )
    try:
        port = orthanc.layout.dicom_port
        query = mwl_query({"AccessionNumber": "ACC1"}, {})
        answers, final = find_pynetdicom(port, query, calling_aet="CT01")
        assert (keys_of(answers), final) == (["1"], 0x0000)

        assert find_pynetdicom(port, query, calling_aet="UNKNOWN") == ([], None)
    finally:
        orthanc.stop()
