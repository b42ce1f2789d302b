"""AI_AUTO_ANALYZERS=quality on the real stack: a study sent over C-STORE (dcmtk storescu) to
Orthanc with the plugin, registered by the sidecar once stable, analysed by the runner's own
thread with nothing asked over the API; its quality report stored in the study in Orthanc, read
back with pydicom, the API's findings mirroring it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from sidecar.analyses.structured_report import read_report

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[Stack]:
    running = Stack(tmp_path, database_url)
    running.settings = running.settings.model_copy(update={"ai_auto_analyzers": "quality"})
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


def test_a_stable_study_gets_its_quality_report_by_itself(stack: Stack, tmp_path: Path) -> None:
    images = make_study(tmp_path / "study", series_count=1, instances_per_series=4, modality="CT")
    blank = pydicom.dcmread(images.files[1])
    blank.PixelData = bytes(len(blank.PixelData))  # every pixel 0: a blank image
    blank.save_as(images.files[1])
    assert storescu_dcmtk(images.files, *stack.dicom_address).all_success
    study = stack.wait_for_study(images.study_instance_uid, instances=4)

    def completed() -> dict[str, Any] | None:
        listed = stack.api("GET", f"/api/studies/{study['id']}/analyses").json()["items"]
        done = [a for a in listed if a["status"] not in ("SCHEDULED", "IN_PROGRESS")]
        return done[0] if done else None

    summary = wait_for(completed, timeout=60, what="the auto analysis ended")
    assert summary["status"] == "COMPLETED", summary
    assert summary["requestedBy"] == "auto"
    assert [t["analyzer"] for t in summary["tasks"]] == ["quality"]
    analysis = stack.api("GET", f"/api/analyses/{summary['analysisId']}").json()

    report_uid = analysis["tasks"][0]["reportSopInstanceUID"]
    found = httpx.post(f"{stack.orthanc.url}/tools/lookup", content=report_uid, timeout=10)
    [orthanc_id] = [r["ID"] for r in found.json() if r["Type"] == "Instance"]
    content = httpx.get(f"{stack.orthanc.url}/instances/{orthanc_id}/file", timeout=10).content
    report = pydicom.dcmread(io.BytesIO(content))
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == images.study_instance_uid
    read = read_report(report)
    assert read.analyzer_name == "quality"
    blank_uid = str(blank.SOPInstanceUID)
    in_report = {(f.finding, f.image.sop_instance_uid if f.image else None) for f in read.findings}
    assert ("blank or uniform image", blank_uid) in in_report
    in_api = {(f["finding"], f["imageId"]) for f in analysis["findings"]}
    assert in_api == in_report
