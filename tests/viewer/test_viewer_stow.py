"""STOW-RS through both viewer fronts (the sidecar's own, and nginx running viewer/nginx.conf),
into a real Orthanc with its DICOMweb plugin: who may store, into which study, what the answer
says (the plugin's DICOM JSON, the standard's statuses), and that nothing else gets through.
One stack for both fronts: the viewer tests are slow."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from sidecar.viewer.stow import AUDIT_ACTION, NOT_AUTHORIZED, PROCESSING_FAILURE

from hostile_paths import StoredStudy, send_raw, store_study, viewer_credentials
from nginx_front import start_nginx_front
from stack import Stack
from stow_requests import BOUNDARY, STOW_TYPE, body, failures, make_sr, referenced, stow


def repeated_element(tag: int, value: str) -> bytes:
    """An element appended, out of order, to a file that has it already (explicit VR LE)."""
    encoded = value.encode() + (b"\0" if len(value) % 2 else b"")
    group, element = tag >> 16, tag & 0xFFFF
    header = group.to_bytes(2, "little") + element.to_bytes(2, "little") + b"UI"
    return header + len(encoded).to_bytes(2, "little") + encoded


def in_orthanc(stack: Stack, study_uid: str, sop_uid: str) -> bool:
    found = httpx.get(
        f"{stack.orthanc.url}/dicom-web/studies/{study_uid}/instances",
        params={"SOPInstanceUID": sop_uid},
        timeout=10,
    )
    return found.status_code == 200 and bool(found.json())


def _radiologist(stack: Stack, name: str, facilities: tuple[str, ...] = ()) -> dict[str, str]:
    password = f"radiologist-password-{secrets.token_hex(4)}"
    user: dict[str, Any] = {"username": name, "password": password, "role": "radiologist"}
    if facilities:
        user["facilities"] = list(facilities)
    assert stack.api("POST", "/api/users", json=user).status_code == 201
    return {"Authorization": f"Bearer {stack.login(name, password)}"}


def test_stow_rs_through_both_fronts(stack: Stack, tmp_path: Path) -> None:
    mine = store_study(stack, tmp_path / "mine")
    other = store_study(stack, tmp_path / "other")
    stack.wait_until_synced()
    users = viewer_credentials(stack, mine)
    users["radiologist"] = _radiologist(stack, "dr.reader")
    users["elsewhere"] = _radiologist(stack, "dr.north", ("NORTH-HOSP",))
    assert stack.sidecar is not None
    stack.settings.upload_max_mb = 1  # the sidecar's own Settings: the limit applies at once
    nginx = start_nginx_front(
        tmp_path / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    stored: list[str] = []
    try:
        for front in (stack.sidecar.url, nginx.url):
            stored += _stores_as_the_standard_says(stack, front, users, mine, other)
            _refuses_everything_else(stack, front, users, mine)
    finally:
        nginx.stop()

    # The sidecar lists the new instances (queued for registration at once), and the trail
    # says who stored how many into which study, with no patient data.
    stack.wait_for_study(mine.study_uid, instances=1 + len(stored))
    study_id = stack.study_by_uid(mine.study_uid)["id"]  # type: ignore[index]
    events = stack.api("GET", "/api/audit", params={"action": AUDIT_ACTION}).json()["items"]
    assert {(e["actor"], e["entityType"], e["entityId"]) for e in events} == {
        ("dr.reader", "study", str(study_id)),
        ("admin", "study", str(study_id)),
    }
    assert sum(e["detail"]["count"] for e in events) == len(stored)
    assert sorted(u for e in events for u in e["detail"]["sop_instance_uids"]) == sorted(stored)
    text = repr(events)
    assert mine.patient_id not in text and mine.patient_name not in text
    # Nothing reached the other patient's study.
    assert stack.study_by_uid(other.study_uid)["instanceCount"] == 1  # type: ignore[index]


def _stores_as_the_standard_says(
    stack: Stack,
    front: str,
    users: dict[str, dict[str, str]],
    mine: StoredStudy,
    other: StoredStudy,
) -> list[str]:
    # A radiologist saves a measurement report, as OHIF does (no study in the path).
    sop, sr = make_sr(mine.study_uid, mine.patient_id)
    answer = stow(front, users["radiologist"], sr)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert referenced(answer) == [sop] and failures(answer) == {}
    # Orthanc wrote its URLs for the front the client used.
    assert answer.json()["00081190"]["Value"][0].startswith(front + "/dicom-web/studies/")
    assert in_orthanc(stack, mine.study_uid, sop)
    # An administrator, with the study in the path.
    admin_sop, admin_sr = make_sr(mine.study_uid, mine.patient_id)
    answer = stow(front, users["admin"], admin_sr, study=mine.study_uid)
    assert answer.status_code == 200, answer.text
    assert referenced(answer) == [admin_sop]

    # Another patient's id in an instance of my study (it would become another patient's study
    # in Orthanc): a conflict. A study the sidecar does not know, or one out of the user's
    # reach: refused alike, as not authorised.
    wrong_sop, wrong_patient = make_sr(mine.study_uid, other.patient_id)
    answer = stow(front, users["radiologist"], wrong_patient)
    assert answer.status_code == 409, answer.text
    assert failures(answer) == {wrong_sop: PROCESSING_FAILURE}
    unknown_sop, unknown = make_sr(str(generate_uid()), mine.patient_id)
    answer = stow(front, users["radiologist"], unknown)
    assert answer.status_code == 403, answer.text
    assert failures(answer) == {unknown_sop: NOT_AUTHORIZED}
    reach_sop, out_of_reach = make_sr(mine.study_uid, mine.patient_id)
    answer = stow(front, users["elsewhere"], out_of_reach)
    assert answer.status_code == 403, answer.text
    assert failures(answer) == {reach_sop: NOT_AUTHORIZED}
    # The path names the other study: my instance is not of it.
    path_sop, mismatch = make_sr(mine.study_uid, mine.patient_id)
    answer = stow(front, users["radiologist"], mismatch, study=other.study_uid)
    assert answer.status_code == 409, answer.text
    assert failures(answer) == {path_sop: PROCESSING_FAILURE}
    # A file read one way by the front (pydicom keeps the last of a repeated element) and another
    # way by Orthanc (DCMTK keeps the first): it is sent to Orthanc under the study the front
    # checked, and the plugin refuses it for naming another.
    smuggled_sop, smuggled = make_sr(other.study_uid, mine.patient_id)
    smuggled += repeated_element(0x0020000D, mine.study_uid)
    answer = stow(front, users["radiologist"], smuggled)
    assert 400 <= answer.status_code < 500 and not referenced(answer), answer.text
    # Some stored, some refused: 202, each listed.
    good_sop, good = make_sr(mine.study_uid, mine.patient_id)
    answer = stow(front, users["radiologist"], good, wrong_patient)
    assert answer.status_code == 202, answer.text
    assert referenced(answer) == [good_sop]
    assert failures(answer) == {wrong_sop: PROCESSING_FAILURE}
    for refused in (wrong_sop, unknown_sop, reach_sop, path_sop, smuggled_sop):
        assert not in_orthanc(stack, mine.study_uid, refused)
        assert not in_orthanc(stack, other.study_uid, refused)
    return [sop, admin_sop, good_sop]


def _refuses_everything_else(
    stack: Stack, front: str, users: dict[str, dict[str, str]], mine: StoredStudy
) -> None:
    before = len(stack.orthanc_get(f"/studies/{mine.orthanc_id}/instances"))
    # Roles that read but never store, and nobody.
    for who, status in (("dr.technologist", 403), ("dr.physician", 403), ("nobody", 401)):
        _, sr = make_sr(mine.study_uid, mine.patient_id)
        assert stow(front, users[who], sr).status_code == status, who
        assert stow(front, users[who], sr, study=mine.study_uid).status_code == status, who
    radiologist = users["radiologist"]
    _, sr = make_sr(mine.study_uid, mine.patient_id)
    study = f"/dicom-web/studies/{mine.study_uid}"
    stow_headers = {**radiologist, "Content-Type": STOW_TYPE}
    # Other methods, other targets, method overrides, queries.
    for method, target in (
        ("PUT", study),
        ("DELETE", study),
        ("PATCH", study),
        ("POST", f"{study}/series"),
        ("POST", f"/dicom-web/studies/{mine.study_uid}/series/{mine.series_uid}"),
        ("POST", "/dicom-web/studies?_method=DELETE"),
        ("POST", f"{study}?_method=DELETE"),
        ("POST", "/dicom-web/studies?x=1"),
        ("POST", "/dicom-web/%2e%2e/studies"),
        ("POST", "/dicom-web/servers"),
        ("POST", "/instances"),
        ("GET", f"{study}?_method=DELETE"),
    ):
        answer = send_raw(front, target, stow_headers, method=method, body=body(sr))
        assert 400 <= answer.status < 500, (method, target, answer.status)
    override = {**stow_headers, "X-HTTP-Method-Override": "DELETE"}
    assert send_raw(front, study, override, method="POST", body=body(sr)).status == 400
    # Not STOW-RS's media type.
    plain = {**radiologist, "Content-Type": "application/dicom"}
    assert send_raw(front, "/dicom-web/studies", plain, method="POST", body=sr).status == 415
    # Larger than UPLOAD_MAX_MB (1 MB here): declared, and streamed without a length.
    big = body(b"\0" * (2 * 1024 * 1024))
    too_large = httpx.post(front + "/dicom-web/studies", content=big, headers=stow_headers)
    assert too_large.status_code == 413, too_large.text

    def chunks() -> Any:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(4):
            yield b"\0" * (512 * 1024)

    streamed = httpx.post(front + "/dicom-web/studies", content=chunks(), headers=stow_headers)
    assert streamed.status_code == 413, streamed.text
    assert len(stack.orthanc_get(f"/studies/{mine.orthanc_id}/instances")) == before
    # The study is still there, untouched, for whoever may read it.
    assert httpx.get(front + study + "/metadata", headers=radiologist, timeout=10).is_success
