"""A study kept from the viewer (quarantined: the sidecar found its Study Instance UID held under
several patient ids) stays kept whichever way a request names it: in the path, in a QIDO filter
(keyword or tag, one UID or a list), in WADO-URI's studyUID; and a WADO-URI download is audited
as a view of its study, as a WADO-RS one is. Both fronts, against a real Orthanc: the sidecar's
own and nginx running viewer/nginx.conf (sidecar.viewer.targets decides for both)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from sidecar.studies.models import Study

from hostile_paths import StoredStudy, send_raw, store_study
from stack import STACK_ADMIN_PASSWORD, Stack, wait_for
from testapp import engine_of

pytestmark = pytest.mark.orthanc

WADO_URI = "/wado?requestType=WADO&contentType=application/dicom"


@pytest.fixture
def studies(stack: Stack, tmp_path: Path) -> tuple[StoredStudy, StoredStudy]:
    """(kept, shown): two studies in Orthanc, the first quarantined by the sidecar."""
    kept = store_study(stack, tmp_path / "kept")
    shown = store_study(stack, tmp_path / "shown")
    # The flag is set as the sync sets it; the sync must be done with both studies first (a
    # late StableStudy would re-register the study and clear it: Orthanc holds one patient).
    wait_for(lambda: _stable_studies(stack) >= 2, timeout=30, what="both studies stable in Orthanc")
    stack.wait_until_synced()
    assert stack.sidecar is not None
    with Session(engine_of(stack.sidecar.app)) as session:
        row = session.exec(select(Study).where(Study.study_instance_uid == kept.study_uid)).one()
        row.conflicting_patient_ids = "PAT-OTHER"
        session.add(row)
        session.commit()
    return kept, shown


def _stable_studies(stack: Stack) -> int:
    changes = stack.orthanc_get("/changes?limit=1000")["Changes"]
    return sum(change["ChangeType"] == "StableStudy" for change in changes)


def _bearer(
    stack: Stack, username: str = "admin", password: str = STACK_ADMIN_PASSWORD
) -> dict[str, str]:
    token = stack.login(username, password)
    # Uncompressed answers, to search them (the sidecar's proxy asks Orthanc for gzip otherwise).
    return {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}


def _fill(target: str, kept: StoredStudy, shown: StoredStudy) -> str:
    return target.format(
        uid=kept.study_uid,
        series=kept.series_uid,
        sop=kept.sop_uid,
        other=shown.study_uid,
        other_series=shown.series_uid,
        other_sop=shown.sop_uid,
    )


# Each names the kept study, beside the shown one or not.
NAMING_THE_KEPT_STUDY = (
    "/dicom-web/studies/{uid}/series",
    "/dicom-web/studies?StudyInstanceUID={uid}",
    "/dicom-web/series?StudyInstanceUID={uid}",
    "/dicom-web/instances?StudyInstanceUID={uid}",
    "/dicom-web/instances?0020000D={uid}",
    "/dicom-web/series?0020000d={uid}&includefield=all",
    "/dicom-web/studies?limit=10&studyinstanceuid={uid}",
    "/dicom-web/studies?StudyInstanceUID={other},{uid}",
    "/dicom-web/studies?StudyInstanceUID={other}%2C{uid}",
    "/dicom-web/series?StudyInstanceUID={other}%5C{uid}",
    "/dicom-web/series?StudyInstanceUID={other}\\{uid}",
    "/dicom-web/series?StudyInstanceUID={uid}&StudyInstanceUID={other}",
    "/dicom-web/series?StudyInstanceUID={other}&StudyInstanceUID={uid}",
    "/dicom-web/studies/{other}/series?StudyInstanceUID={uid}",
    WADO_URI + "&studyUID={uid}&seriesUID={series}&objectUID={sop}",
    WADO_URI + "&studyUID={uid}&objectUID={sop}",
    WADO_URI + "&studyUID={other}&studyUID={uid}&objectUID={sop}",
    WADO_URI + "&studyUID={uid}&studyUID={other}&objectUID={other_sop}",
)


def test_a_quarantined_study_is_kept_however_the_request_names_it(
    stack: Stack, viewer_front_url: str, studies: tuple[StoredStudy, StoredStudy]
) -> None:
    kept, shown = studies
    front = viewer_front_url
    headers = _bearer(stack)
    for template in NAMING_THE_KEPT_STUDY:
        target = _fill(template, kept, shown)
        answer = send_raw(front, target, headers)
        assert answer.status == 403, (template, answer.status, answer.body[:200])
        if stack.sidecar is not None and front == stack.sidecar.url:
            assert b'"quarantined"' in answer.body, (template, answer.body[:200])
        text = answer.body.decode("latin-1")
        assert not [secret for secret in kept.secrets if secret in text], template
    # The other study, asked for alone, is served.
    for template in (
        "/dicom-web/series?StudyInstanceUID={other}",
        "/dicom-web/instances?0020000D={other}",
        WADO_URI + "&studyUID={other}&seriesUID={other_series}&objectUID={other_sop}",
    ):
        answer = send_raw(front, _fill(template, kept, shown), headers)
        assert answer.status == 200, (template, answer.status, answer.body[:200])
        assert shown.study_uid.encode() in answer.body, template


def test_wado_uri_serves_an_instance_only_through_the_study_it_names(
    stack: Stack, viewer_front_url: str, studies: tuple[StoredStudy, StoredStudy]
) -> None:
    """Orthanc's WADO-URI finds the instance by objectUID alone and checks studyUID only when
    one is given (Plugin/WadoUri.cpp): the fronts require it, and Orthanc refuses an instance
    that is not in the study named."""
    kept, shown = studies
    front = viewer_front_url
    headers = _bearer(stack)
    refused = {
        WADO_URI + "&objectUID={sop}": 400,
        WADO_URI + "&seriesUID={series}&objectUID={sop}": 400,
        WADO_URI + "&studyUID=&objectUID={sop}": 400,
        WADO_URI + "&studyUID={other}&studyUID=&objectUID={sop}": 400,
        WADO_URI + "&studyUID&objectUID={sop}": 400,
        WADO_URI + "&StudyUID={other}&objectUID={sop}": 400,
        WADO_URI + "&studyUID={other}*&objectUID={sop}": 400,
        WADO_URI + "&studyUID=%31{other}&objectUID={sop}": 400,
        # Names a study the viewer may see, and an instance of the kept one: Orthanc's 404.
        WADO_URI + "&studyUID={other}&objectUID={sop}": 404,
        WADO_URI + "&studyUID={other}&seriesUID={other_series}&objectUID={sop}": 404,
        WADO_URI + "&studyUID={other}&seriesUID={series}&objectUID={sop}": 404,
    }
    for template, status in refused.items():
        target = _fill(template, kept, shown)
        answer = send_raw(front, target, headers)
        assert answer.status == status, (template, answer.status, answer.body[:200])
        text = answer.body.decode("latin-1")
        assert not [secret for secret in kept.secrets if secret in text], template
    # What the fronts rely on, asked of Orthanc itself: without studyUID the kept study's
    # instance comes out; with another study's UID it does not.
    orthanc = stack.orthanc.url
    alone = send_raw(orthanc, _fill(WADO_URI + "&objectUID={sop}", kept, shown))
    assert alone.status == 200 and kept.patient_id.encode() in alone.body
    mismatched = send_raw(
        orthanc, _fill(WADO_URI + "&studyUID={other}&objectUID={sop}", kept, shown)
    )
    assert mismatched.status == 404


def test_a_wado_uri_download_and_a_scoped_search_are_audited_as_views_of_their_study(
    stack: Stack, viewer_front_url: str, studies: tuple[StoredStudy, StoredStudy]
) -> None:
    kept, shown = studies
    front = viewer_front_url
    target = _fill(
        WADO_URI + "&studyUID={other}&seriesUID={other_series}&objectUID={other_sop}", kept, shown
    )
    for _ in range(2):
        answer = send_raw(front, target, _bearer(stack))
        assert answer.status == 200
        assert answer.body[128:132] == b"DICM"  # the DICOM file
    password = "radiologist-password-1"
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr.search", "password": password, "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    radiologist = _bearer(stack, "dr.search", password)
    search = f"/dicom-web/series?StudyInstanceUID={shown.study_uid}"
    assert send_raw(front, search, radiologist).status == 200

    study_id = stack.study_by_uid(shown.study_uid)["id"]  # type: ignore[index]
    audit = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert sorted((e["actor"], e["entityType"], e["entityId"]) for e in audit) == [
        ("admin", "study", str(study_id)),
        ("dr.search", "study", str(study_id)),
    ]
