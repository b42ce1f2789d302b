"""The ingest backbone against the real parts: Orthanc (Debian package) with the plugin, dcmtk
and pynetdicom as modalities, the sidecar over a real socket, SQLite or PostgreSQL."""

from __future__ import annotations

import socket
from datetime import date
from pathlib import Path

import httpx
import pytest

from sidecar.core.modalities import RegisteredModality

from dicom_factory import add_instances, make_invalid_files, make_study
from dicom_senders import is_success, store_pynetdicom, storescu_dcmtk
from stack import STACK_PLUGIN_TOKEN, Stack, wait_for

pytestmark = pytest.mark.orthanc


def _iso(dicom_date: str) -> str:
    return date(int(dicom_date[:4]), int(dicom_date[4:6]), int(dicom_date[6:])).isoformat()


def test_study_sent_with_dcmtk_is_registered_with_its_metadata(
    stack: Stack, tmp_path: Path
) -> None:
    generated = make_study(tmp_path / "dicom", series_count=2, instances_per_series=3)
    result = storescu_dcmtk(generated.files, *stack.dicom_address)
    assert result.all_success, result.failed

    study = stack.wait_for_study(generated.study_instance_uid, instances=6)

    assert study["seriesCount"] == 2
    assert study["accessionNumber"] == generated.accession_number
    assert study["patientId"] == generated.patient_id
    assert study["patientName"] == generated.patient_name
    assert study["patientBirthDate"] == _iso(generated.patient_birth_date)
    assert study["patientSex"] == generated.patient_sex
    assert study["studyDate"] == _iso(generated.study_date)
    assert study["studyDescription"] == generated.study_description
    assert study["referringPhysician"] == generated.referring_physician
    assert study["bodyPart"] == generated.body_part
    assert study["modalities"] == ["CT"]
    assert study["status"] == "COMPLETED"

    detail = stack.api("GET", f"/api/studies/{study['id']}").json()
    assert [
        (s["seriesInstanceUID"], s["seriesNumber"], s["instanceCount"]) for s in detail["series"]
    ] == [(s.series_instance_uid, s.series_number, 3) for s in generated.series]
    assert (
        stack.api("GET", f"/api/studies/accession/{generated.accession_number}").json()["id"]
        == study["id"]
    )


def test_image_attributes_are_recorded_per_instance(stack: Stack, tmp_path: Path) -> None:
    generated = make_study(
        tmp_path / "dicom",
        series_count=2,
        instances_per_series=2,
        rows=32,
        columns=48,
        pixel_spacing=(0.5, 0.6),
    )
    storescu_dcmtk(generated.files, *stack.dicom_address)
    study = stack.wait_for_study(generated.study_instance_uid, instances=4)

    def all_images() -> list[dict[str, object]] | None:
        items = stack.api("GET", f"/api/studies/{study['id']}/images").json()["items"]
        return items if len(items) == 4 else None

    images = wait_for(all_images, timeout=10, what="image rows")
    expected = {i.sop_instance_uid: i for i in generated.instances}
    for image in images:
        source = expected[str(image["sopInstanceUID"])]
        assert (image["rows"], image["columns"]) == (32, 48)
        assert image["pixelSpacing"] == [0.5, 0.6]
        assert image["instanceNumber"] == source.instance_number
        assert image["sliceThickness"] == pytest.approx(source.slice_thickness)
        assert image["windowCenter"] == pytest.approx(source.window_center)
        assert image["windowWidth"] == pytest.approx(source.window_width)

    series = generated.series[1]
    in_series = stack.api(
        "GET", f"/api/studies/{study['id']}/series/{series.series_instance_uid}/images"
    ).json()
    assert [i["sopInstanceUID"] for i in in_series["items"]] == list(series.sop_instance_uids)
    one = stack.api("GET", f"/api/images/{images[0]['id']}").json()
    assert one["sopInstanceUID"] == images[0]["sopInstanceUID"]


def test_study_sent_with_pynetdicom_is_registered(stack: Stack, tmp_path: Path) -> None:
    generated = make_study(
        tmp_path / "dicom", series_count=2, instances_per_series=4, modality="MR"
    )
    statuses = store_pynetdicom(generated.files, *stack.dicom_address)
    assert all(is_success(s) for s in statuses), statuses

    study = stack.wait_for_study(generated.study_instance_uid, instances=8)
    assert study["seriesCount"] == 2
    assert study["modalities"] == ["MR"]


def test_late_instances_update_counts_without_duplicating_the_study(
    stack: Stack, tmp_path: Path
) -> None:
    generated = make_study(tmp_path / "dicom", series_count=2, instances_per_series=3)
    storescu_dcmtk(generated.files, *stack.dicom_address)
    first = stack.wait_for_study(generated.study_instance_uid, instances=6)

    late = add_instances(generated, tmp_path / "late", series_index=0, count=2)
    storescu_dcmtk([i.path for i in late], *stack.dicom_address)
    updated = stack.wait_for_study(generated.study_instance_uid, instances=8)

    assert updated["id"] == first["id"]
    assert updated["seriesCount"] == 2
    detail = stack.api("GET", f"/api/studies/{first['id']}").json()
    assert sorted(s["instanceCount"] for s in detail["series"]) == [3, 5]
    wait_for(
        lambda: stack.api("GET", f"/api/studies/{first['id']}/images").json()["total"] == 8,
        timeout=10,
        what="8 image rows",
    )
    audit = stack.api("GET", "/api/audit", params={"entityId": str(first["id"])}).json()["items"]
    assert [e["action"] for e in audit].count("study.registered") == 1


def test_studies_stored_while_the_sidecar_is_down_are_registered_once_it_is_back(
    tmp_path: Path, database_url: str
) -> None:
    stack = Stack(tmp_path, database_url)
    stack.start_orthanc()
    try:
        studies = [make_study(tmp_path / f"dicom{n}", instances_per_series=2) for n in range(3)]
        for generated in studies:
            storescu_dcmtk(generated.files, *stack.dicom_address)
        # The plugin's notifications fail (nothing listens); wait until Orthanc saw them stable.
        wait_for(
            lambda: all(s["IsStable"] for s in stack.orthanc_get("/studies?expand")),
            timeout=20,
            what="studies stable in Orthanc",
        )
        stack.start_sidecar()
        for generated in studies:
            stack.wait_for_study(generated.study_instance_uid, instances=4)
        stack.wait_until_synced()
        uids = [s["studyInstanceUID"] for s in stack.studies()]
        assert sorted(uids) == sorted(s.study_instance_uid for s in studies)
    finally:
        stack.close()


def test_study_whose_stable_event_was_lost_in_an_orthanc_crash_is_registered(
    tmp_path: Path, database_url: str
) -> None:
    # Orthanc's StableAge far beyond the test: StableStudy never fires, as when Orthanc dies
    # within it. The change log still names the study, and the sidecar registers it once its
    # last instance (LastUpdate) is older than the sidecar's STABLE_AGE, here 2 s.
    stack = Stack(tmp_path, database_url, stable_age=600)
    stack.settings = stack.settings.model_copy(update={"stable_age": 2})
    stack.start_orthanc()
    stack.start_sidecar()
    try:
        generated = make_study(tmp_path / "dicom", instances_per_series=2)
        storescu_dcmtk(generated.files, *stack.dicom_address)
        stack.orthanc.kill()
        stack.start_orthanc()  # same storage; stability is tracked in memory, so it is gone

        study = stack.wait_for_study(generated.study_instance_uid, instances=4)
        stack.wait_until_synced()
        assert [s["id"] for s in stack.studies()] == [study["id"]]
    finally:
        stack.close()


def test_sidecar_restart_keeps_its_place_in_the_change_log(
    tmp_path: Path, database_url: str
) -> None:
    stack = Stack(tmp_path, database_url)
    stack.start_orthanc()
    stack.start_sidecar()
    try:
        first = make_study(tmp_path / "one", instances_per_series=1)
        storescu_dcmtk(first.files, *stack.dicom_address)
        stack.wait_for_study(first.study_instance_uid, instances=2)
        cursor = stack.wait_until_synced()["changesCursor"]
        stack.stop_sidecar()

        second = make_study(tmp_path / "two", instances_per_series=1)
        storescu_dcmtk(second.files, *stack.dicom_address)
        stack.start_sidecar()
        stack.wait_for_study(second.study_instance_uid, instances=2)
        health = stack.wait_until_synced()
        assert health["changesCursor"] > cursor
        assert len(stack.studies()) == 2
        audit = stack.api("GET", "/api/audit", params={"action": "study.registered"}).json()
        assert audit["total"] == 2
    finally:
        stack.close()


def test_invalid_dicom_is_refused_and_leaves_no_record(stack: Stack, tmp_path: Path) -> None:
    invalid = make_invalid_files(tmp_path / "invalid")
    statuses = store_pynetdicom(
        [invalid["missing_sop_instance_uid"], invalid["missing_study_instance_uid"]],
        *stack.dicom_address,
    )
    assert not any(is_success(s) for s in statuses), statuses
    rest = httpx.post(f"{stack.orthanc.url}/instances", content=b"not a DICOM file", timeout=10)
    assert rest.status_code == 400

    stack.wait_until_synced()
    assert stack.studies() == []
    assert stack.orthanc_get("/instances") == []


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_dicom_from_another_host_is_refused_unless_the_modality_is_registered(
    tmp_path: Path, database_url: str
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    stack = Stack(tmp_path, database_url, modalities=(RegisteredModality("CT01", address, 104),))
    stack.start_orthanc()
    stack.start_sidecar()
    try:
        refused = make_study(tmp_path / "refused", series_count=1, instances_per_series=1)
        result = storescu_dcmtk(
            refused.files,
            address,
            stack.layout.dicom_port,
            "ORTHANC",
            calling_aet="UNKNOWN",
            check=False,
        )
        assert result.statuses == [0xA700]

        accepted = make_study(tmp_path / "accepted", series_count=1, instances_per_series=1)
        result = storescu_dcmtk(
            accepted.files, address, stack.layout.dicom_port, "ORTHANC", calling_aet="CT01"
        )
        assert result.all_success
        stack.wait_for_study(accepted.study_instance_uid, instances=1)
        stack.wait_until_synced()
        assert [s["studyInstanceUID"] for s in stack.studies()] == [accepted.study_instance_uid]
    finally:
        stack.close()


def test_plugin_route_checks_its_credential_and_input(stack: Stack) -> None:
    assert stack.sidecar is not None
    url = f"{stack.sidecar.url}/api/orthanc/stable-studies"
    body = {"orthancStudyId": "abc6c028-2fabc6a4-be0132ef-36c63998-cfd4b348"}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(url, json=body, headers=wrong, timeout=10).status_code == 401
    right = {"Authorization": f"Bearer {STACK_PLUGIN_TOKEN}"}
    bad = httpx.post(url, json={"orthancStudyId": "../../etc"}, headers=right, timeout=10)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"

    # A well-formed id Orthanc does not know: accepted, then dropped without a record.
    assert httpx.post(url, json=body, headers=right, timeout=10).status_code == 202
    stack.wait_until_synced()
    assert stack.studies() == []


def test_health_reports_orthanc_down_and_recovers(stack: Stack) -> None:
    assert stack.sidecar is not None
    health = f"{stack.sidecar.url}/health"
    assert httpx.get(health, timeout=10).status_code == 200
    stack.orthanc.stop()
    down = httpx.get(health, timeout=10)
    assert down.status_code == 503
    assert down.json()["checks"]["orthanc"]["status"] == "down"
    assert down.json()["checks"]["database"]["status"] == "up"
    stack.start_orthanc()
    assert httpx.get(health, timeout=10).status_code == 200
