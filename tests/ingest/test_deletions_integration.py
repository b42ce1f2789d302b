"""Deletions made through Orthanc's own REST API, followed by the sidecar, against the real parts:
Orthanc with the plugin (its deletion notices), the sidecar over a real socket, SQLite or
PostgreSQL. One stack for the whole story, since each costs seconds: an instance, a series and
a study deleted with the sidecar up; a study with a report kept as a record and counted in
/health; a study deleted while the sidecar is down, caught by the reconciliation when it starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

PASSWORD = "Kp4-wZ8-Qd3-nR6-deletions"
DEADLINE = 30.0


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    running = Stack(tmp_path, database_url)
    # Only the reconciliation at start runs during the test: what happens with the sidecar up
    # is the plugin's notices' doing.
    running.settings = running.settings.model_copy(update={"orthanc_reconcile_seconds": 3600})
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


def send(stack: Stack, folder: Path, **shape: Any) -> tuple[GeneratedStudy, dict[str, Any]]:
    generated = make_study(folder, **shape)
    result = storescu_dcmtk(generated.files, *stack.dicom_address)
    assert result.all_success, result.failed
    count = len(generated.files)
    study = stack.wait_for_study(generated.study_instance_uid, instances=count)

    def images_recorded() -> bool:
        page = stack.api("GET", f"/api/studies/{study['id']}/images").json()
        return bool(page["total"] == count)

    wait_for(images_recorded, timeout=DEADLINE, what="image rows")
    return generated, study


def delete_in_orthanc(stack: Stack, path: str) -> None:
    httpx.delete(f"{stack.orthanc.url}{path}", timeout=10).raise_for_status()


def detail(stack: Stack, study_id: int) -> dict[str, Any]:
    response = stack.api("GET", f"/api/studies/{study_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def health(stack: Stack) -> dict[str, Any]:
    assert stack.sidecar is not None
    body: dict[str, Any] = httpx.get(f"{stack.sidecar.url}/health", timeout=10).json()
    return body


def test_deletions_made_in_orthanc_are_followed_with_the_sidecar_up_and_down(
    stack: Stack, tmp_path: Path
) -> None:
    kept, kept_study = send(stack, tmp_path / "kept", series_count=2, instances_per_series=2)
    dropped, dropped_study = send(
        stack, tmp_path / "dropped", series_count=1, instances_per_series=2
    )
    reported, reported_study = send(
        stack, tmp_path / "reported", series_count=1, instances_per_series=1
    )

    # One instance deleted through Orthanc's REST API: the image and the counts follow.
    instances = stack.orthanc_get(f"/studies/{kept_study['orthancId']}/instances")
    first_series, second_series = kept.series
    gone_uid = first_series.sop_instance_uids[0]
    [gone] = [i["ID"] for i in instances if i["MainDicomTags"]["SOPInstanceUID"] == gone_uid]
    delete_in_orthanc(stack, f"/instances/{gone}")

    def counts_are(series: int, instances: int) -> dict[str, Any] | None:
        now = detail(stack, kept_study["id"])
        return now if (now["seriesCount"], now["instanceCount"]) == (series, instances) else None

    now = wait_for(lambda: counts_are(2, 3), timeout=DEADLINE, what="an instance followed")
    assert {s["seriesInstanceUID"]: s["instanceCount"] for s in now["series"]} == {
        first_series.series_instance_uid: 1,
        second_series.series_instance_uid: 2,
    }
    images = stack.api("GET", f"/api/studies/{kept_study['id']}/images").json()["items"]
    assert sorted(i["sopInstanceUID"] for i in images) == sorted(
        u for s in kept.series for u in s.sop_instance_uids if u != gone_uid
    )

    # A whole series deleted: the series goes with its images.
    [second] = [
        s["ID"]
        for s in stack.orthanc_get(f"/studies/{kept_study['orthancId']}/series")
        if s["MainDicomTags"]["SeriesInstanceUID"] == second_series.series_instance_uid
    ]
    delete_in_orthanc(stack, f"/series/{second}")
    now = wait_for(lambda: counts_are(1, 1), timeout=DEADLINE, what="a series followed")
    assert [s["seriesInstanceUID"] for s in now["series"]] == [first_series.series_instance_uid]
    assert now["imagesDeleted"] is False

    # A study nothing refers to, deleted: it leaves the lists and answers 404.
    delete_in_orthanc(stack, f"/studies/{dropped_study['orthancId']}")
    wait_for(
        lambda: stack.study_by_uid(dropped.study_instance_uid) is None,
        timeout=DEADLINE,
        what="a deleted study removed",
    )
    assert stack.api("GET", f"/api/studies/{dropped_study['id']}").status_code == 404
    assert stack.api("GET", f"/api/studies/{dropped_study['id']}/images").status_code == 404
    by_accession = stack.api("GET", f"/api/studies/accession/{dropped.accession_number}")
    assert by_accession.status_code == 404

    # A study with a report, deleted: kept as a record marked images-deleted, shown in /health.
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "reader.deletions", "password": PASSWORD, "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    radiologist = {"Authorization": f"Bearer {stack.login('reader.deletions', PASSWORD)}"}
    assert stack.sidecar is not None
    report = httpx.post(
        f"{stack.sidecar.url}/api/reports",
        json={"studyId": reported_study["id"], "findings": "Normal.", "impression": "Normal."},
        headers=radiologist,
        timeout=10,
    )
    assert report.status_code == 201, report.text
    assert health(stack)["studies"]["imagesDeleted"] == 0
    delete_in_orthanc(stack, f"/studies/{reported_study['orthancId']}")

    def marked() -> dict[str, Any] | None:
        now = detail(stack, reported_study["id"])
        return now if now["imagesDeleted"] else None

    record = wait_for(marked, timeout=DEADLINE, what="a reported study marked images-deleted")
    assert record["imagesDeletedAt"] is not None
    assert (record["seriesCount"], record["instanceCount"], record["series"]) == (0, 0, [])
    listed = stack.study_by_uid(reported.study_instance_uid)
    assert listed is not None and listed["imagesDeleted"] is True
    assert health(stack)["studies"]["imagesDeleted"] == 1

    # The sidecar down while the rest of a study is deleted: its notices are lost, and the
    # reconciliation at the next start catches it.
    stack.stop_sidecar()
    delete_in_orthanc(stack, f"/studies/{kept_study['orthancId']}")
    stack.start_sidecar()
    wait_for(
        lambda: stack.study_by_uid(kept.study_instance_uid) is None,
        timeout=DEADLINE,
        what="a study deleted while the sidecar was down removed",
    )
    after = health(stack)
    assert after["deletions"]["lastReconcileAt"] is not None
    assert after["deletions"]["reconcileHeld"] is None
    assert after["deletions"]["pendingChecks"] == 0
    assert after["studies"]["imagesDeleted"] == 1
    audit = stack.api(
        "GET", "/api/audit", params={"action": "study.images_deleted_in_orthanc", "limit": 100}
    ).json()["items"]
    whole = {e["entityId"]: e["detail"] for e in audit if e["detail"].get("whole_study")}
    assert set(whole) == {str(s["id"]) for s in (kept_study, dropped_study, reported_study)}
    assert whole[str(reported_study["id"])]["kept_for"] == ["report"]
    assert whole[str(dropped_study["id"])]["removed"] is True
