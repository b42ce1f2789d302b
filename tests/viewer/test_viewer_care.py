"""A physician's viewer shows the studies of the patients in their care and nothing else, on both
fronts against a real Orthanc: WADO-RS, QIDO scoped to a study and WADO-URI answer for a study
in their care; for any other study they answer 404, as for a study that does not exist; a search
that names no study (Orthanc would answer from the whole archive) is refused with 403; an
emergency access opens the other patient's study. Radiologists keep the department's view,
unless limited to facilities."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from hostile_paths import StoredStudy, send_raw, store_study
from stack import Stack

pytestmark = pytest.mark.orthanc

WADO_URI = "/wado?requestType=WADO&contentType=application/dicom"

# Each names one study: {uid} and its series and instance.
NAMING_ONE_STUDY = (
    "/dicom-web/studies/{uid}/series",
    "/dicom-web/studies/{uid}/metadata",
    "/dicom-web/studies/{uid}/series/{series}/instances/{sop}",
    "/dicom-web/studies?StudyInstanceUID={uid}",
    "/dicom-web/series?StudyInstanceUID={uid}",
    "/dicom-web/instances?0020000D={uid}",
    WADO_URI + "&studyUID={uid}&seriesUID={series}&objectUID={sop}",
)
# Searches Orthanc would answer from the whole archive.
NAMING_NO_STUDY = (
    "/dicom-web/studies",
    "/dicom-web/studies?limit=25&offset=0&includefield=all",
    "/dicom-web/studies?PatientID={patient_id}",
    "/dicom-web/series?SeriesInstanceUID={series}",
    "/dicom-web/instances?SOPInstanceUID={sop}",
)


def _account(
    stack: Stack, role: str, provider_id: str | None = None, facilities: tuple[str, ...] = ()
) -> dict[str, str]:
    username, password = f"u{secrets.token_hex(4)}", f"pw-{secrets.token_hex(8)}"
    user: dict[str, Any] = {
        "username": username,
        "password": password,
        "role": role,
        "facilities": list(facilities),
    }
    if provider_id:
        user["providerId"] = provider_id
    assert stack.api("POST", "/api/users", json=user).status_code == 201
    token = stack.login(username, password)
    return {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}


@pytest.fixture
def studies(stack: Stack, tmp_path: Path) -> tuple[StoredStudy, StoredStudy, str]:
    """(theirs, other, provider id): two patients' studies, the first ordered by the provider."""
    theirs = store_study(stack, tmp_path / "theirs")
    other = store_study(stack, tmp_path / "other")
    stack.wait_until_synced()
    provider_id = f"DR-{secrets.token_hex(4).upper()}"
    order = {
        "patientId": theirs.patient_id,
        "patientName": theirs.patient_name,
        "modality": "CT",
        "procedureDescription": "CT head",
        "providerId": provider_id,
    }
    assert stack.api("POST", "/api/imaging-orders", json=order).status_code == 201
    return theirs, other, provider_id


def test_a_physician_sees_in_the_viewer_only_the_studies_in_their_care(
    stack: Stack, viewer_front_url: str, studies: tuple[StoredStudy, StoredStudy, str]
) -> None:
    theirs, other, provider_id = studies
    front = viewer_front_url
    physician = _account(stack, "physician", provider_id)
    for template in NAMING_ONE_STUDY:
        mine = send_raw(front, theirs.fill(template), physician)
        assert mine.status == 200, (template, mine.status, mine.body[:200])
        assert theirs.study_uid.encode() in mine.body or mine.body[128:132] == b"DICM", template
        refused = send_raw(front, other.fill(template), physician)
        assert refused.status == 404, (template, refused.status, refused.body[:200])
        text = refused.body.decode("latin-1")
        assert not [secret for secret in other.secrets if secret in text], template
    # A list of studies is answered only when every one of them is theirs.
    both = f"/dicom-web/studies?StudyInstanceUID={theirs.study_uid},{other.study_uid}"
    assert send_raw(front, both, physician).status == 404
    for template in NAMING_NO_STUDY:
        refused = send_raw(front, theirs.fill(template), physician)
        assert refused.status == 403, (template, refused.status, refused.body[:200])
        text = refused.body.decode("latin-1")
        assert not [s for s in (*theirs.secrets, *other.secrets) if s in text], template
    # A physician with no provider id cares for no one; a radiologist for the department.
    nobody = _account(stack, "physician")
    assert send_raw(front, theirs.fill(NAMING_ONE_STUDY[0]), nobody).status == 404
    radiologist = _account(stack, "radiologist")
    for template in (*NAMING_ONE_STUDY, *NAMING_NO_STUDY):
        answer = send_raw(front, other.fill(template), radiologist)
        assert answer.status == 200, (template, answer.status, answer.body[:200])
    # A radiologist limited to a facility: these studies are of none (no order, no modality
    # of a facility), so neither is theirs, and a search must name a study.
    elsewhere = _account(stack, "radiologist", facilities=("NORTH-HOSP",))
    for template in NAMING_ONE_STUDY:
        assert send_raw(front, other.fill(template), elsewhere).status == 404, template
    for template in NAMING_NO_STUDY:
        assert send_raw(front, other.fill(template), elsewhere).status == 403, template


def test_emergency_access_opens_the_other_patients_study_in_the_viewer(
    stack: Stack, viewer_front_url: str, studies: tuple[StoredStudy, StoredStudy, str]
) -> None:
    _, other, provider_id = studies
    physician = _account(stack, "physician", provider_id)
    series = other.fill("/dicom-web/studies/{uid}/series")
    assert send_raw(viewer_front_url, series, physician).status == 404
    study = stack.study_by_uid(other.study_uid)
    assert study is not None
    assert stack.sidecar is not None
    granted = httpx.post(
        f"{stack.sidecar.url}/api/studies/{study['id']}/emergency-access",
        json={"reason": "covering the emergency department tonight"},
        headers=physician,
        timeout=10,
    )
    assert granted.status_code == 201, granted.text
    # nginx keeps the sidecar's answer for a path up to 10 s per account and study; a search
    # names the study in its query, which is always asked again.
    search = f"/dicom-web/series?StudyInstanceUID={other.study_uid}"
    opened = send_raw(viewer_front_url, search, physician)
    assert opened.status == 200, (opened.status, opened.body[:200])
    assert other.series_uid.encode() in opened.body
