"""Withdrawing images (issue 15 item 6, IHE IOCM rejection): `DELETE /api/images/{id}` and
`DELETE /api/studies/{id}/series/{uid}` with a reason, against a real Orthanc holding real
studies, registered in the sidecar the way the sync worker registers them. Orthanc loses the
instances, the sidecar's rows and counts follow, the removal is recorded and audited; roles,
care scope and signed reports refuse what they must; with Orthanc down the removal is queued
(202) and the worker completes it once Orthanc answers.

One Orthanc (without the plugin) serves the run; each test has its own UIDs and database (both
databases)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.ingest.deletion_watch import DeletionWatch
from sidecar.ingest.dicom_mapping import image_records, study_record
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.patients.image_rewrite import rewrite_study
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.studies.image_rows import drop_image_rows
from sidecar.studies.models import Image, Series, Study
from sidecar.studies.registry import register_images, register_study
from sidecar.studies.removal_models import ImageRemoval, RejectionReason, RemovalState
from sidecar.studies.removal_worker import ImageRemover

from builders import UID_ROOT, SeriesSpec, audit_events, orthanc_study, seed_study
from dicom_factory import GeneratedStudy, make_study
from reporting import SECTIONS
from testapp import CLOSED_ORTHANC_URL, app_settings, engine_of, login

pytestmark = pytest.mark.orthanc

HeadersFor = Callable[[Role], dict[str, str]]


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


@pytest.fixture
def settings(database_url: str, tmp_path: Path, orthanc: OrthancProcess) -> Settings:
    return app_settings(database_url, tmp_path, orthanc_url=orthanc.url, orthanc_timeout=30)


@pytest.fixture
def engine(app: FastAPI) -> Engine:
    engine: Engine = engine_of(app)
    return engine


class Stored:
    """A generated study stored in Orthanc and registered in the sidecar."""

    def __init__(self, images: GeneratedStudy, orthanc_ids: dict[str, str], study_id: int):
        self.images = images
        self.orthanc_ids = orthanc_ids  # SOP Instance UID -> Orthanc instance id
        self.study_id = study_id

    def series_uid(self, index: int) -> str:
        return self.images.series[index].series_instance_uid

    def sop_uids(self, index: int) -> list[str]:
        return [i.sop_instance_uid for i in self.images.series[index].instances]


def store(orthanc: OrthancProcess, engine: Engine, folder: Path, **values: Any) -> Stored:
    """Two series of three instances stored in Orthanc, registered as the sync does (study,
    series, then every image's attributes from Orthanc's answers)."""
    images = make_study(folder, series_count=2, instances_per_series=3, **values)
    ids: dict[str, str] = {}
    study = ""
    for instance in images.instances:
        answer = httpx.post(f"{orthanc.url}/instances", content=instance.path.read_bytes())
        answer.raise_for_status()
        ids[instance.sop_instance_uid] = answer.json()["ID"]
        study = answer.json()["ParentStudy"]
    client = OrthancClient(orthanc.url)
    record = study_record({**client.study(study), "IsStable": True}, client.study_series(study))
    with Session(engine) as session:
        row = register_study(session, record)
        register_images(session, row, image_records(client.study_instances_tags(study)))
        session.commit()
        assert row.id is not None
        return Stored(images, ids, row.id)


def in_orthanc(orthanc: OrthancProcess, instance_id: str) -> bool:
    status = httpx.get(f"{orthanc.url}/instances/{instance_id}").status_code
    assert status in (200, 404)
    return status == 200


def image_id(engine: Engine, sop_uid: str) -> int:
    with Session(engine) as session:
        found = session.exec(select(Image.id).where(Image.sop_instance_uid == sop_uid)).first()
        assert found is not None
        return found


def reject_image(
    client: TestClient, headers: dict[str, str], image: int, reason: str | None
) -> httpx.Response:
    params = {"reason": reason} if reason is not None else {}
    answer: httpx.Response = client.delete(f"/api/images/{image}", headers=headers, params=params)
    return answer


def reject_series(
    client: TestClient, headers: dict[str, str], study_id: int, uid: str, reason: str
) -> httpx.Response:
    answer: httpx.Response = client.delete(
        f"/api/studies/{study_id}/series/{uid}", headers=headers, params={"reason": reason}
    )
    return answer


def study_json(client: TestClient, headers: dict[str, str], study_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/studies/{study_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def listed_uids(client: TestClient, headers: dict[str, str], study_id: int) -> set[str]:
    answer = client.get(f"/api/studies/{study_id}/images", headers=headers)
    assert answer.status_code == 200, answer.text
    return {item["sopInstanceUID"] for item in answer.json()["items"]}


def removals(engine: Engine) -> list[ImageRemoval]:
    with Session(engine) as session:
        return list(session.exec(select(ImageRemoval).order_by(col(ImageRemoval.id))).all())


def assert_no_patient_data(text: str, images: GeneratedStudy) -> None:
    for value in (images.patient_name, images.patient_id, images.patient_birth_date):
        assert value not in text


# -- removing ---------------------------------------------------------------------------------


def test_an_image_then_a_series_leave_orthanc_and_the_counts_and_lists_follow(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    radiologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    stored = store(orthanc, engine, tmp_path / "a")
    first, *rest = stored.sop_uids(0)
    # The same SOP Instance UID under another study (a forged copy): never touched.
    forged = pydicom.dcmread(stored.images.series[0].instances[0].path)
    forged.StudyInstanceUID = generate_uid()
    buffer = io.BytesIO()
    forged.save_as(buffer)
    other_copy = httpx.post(f"{orthanc.url}/instances", content=buffer.getvalue()).json()["ID"]

    first_id = image_id(engine, first)
    answer = reject_image(client, technologist, first_id, "QUALITY")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["state"], body["scope"], body["reason"]) == ("DONE", "IMAGE", "QUALITY")
    assert (body["reasonCode"], body["reasonMeaning"]) == ("113001", "Rejected for Quality Reasons")
    assert (body["studyId"], body["seriesInstanceUID"], body["instanceCount"]) == (
        stored.study_id,
        stored.series_uid(0),
        1,
    )
    assert [i["sopInstanceUID"] for i in body["instances"]] == [first]
    assert body["requestedBy"] == "technologist-user" and body["completedAt"] is not None
    assert not in_orthanc(orthanc, stored.orthanc_ids[first])
    assert all(in_orthanc(orthanc, stored.orthanc_ids[uid]) for uid in rest)
    assert in_orthanc(orthanc, other_copy)
    study = study_json(client, technologist, stored.study_id)
    assert (study["instanceCount"], study["seriesCount"]) == (5, 2)
    assert {s["seriesInstanceUID"]: s["instanceCount"] for s in study["series"]} == {
        stored.series_uid(0): 2,
        stored.series_uid(1): 3,
    }
    assert first not in listed_uids(client, technologist, stored.study_id)
    assert len(listed_uids(client, technologist, stored.study_id)) == 5
    # Gone: asking again finds nothing.
    assert body["instances"][0]["imageId"] == first_id
    assert reject_image(client, technologist, first_id, "QUALITY").status_code == 404

    answer = reject_series(
        client, radiologist, stored.study_id, stored.series_uid(0), "WRONG_WORKLIST_ENTRY"
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["state"], body["scope"], body["reasonCode"]) == ("DONE", "SERIES", "113038")
    assert sorted(i["sopInstanceUID"] for i in body["instances"]) == sorted(rest)
    assert body["instanceCount"] == 2
    assert not any(in_orthanc(orthanc, stored.orthanc_ids[uid]) for uid in stored.sop_uids(0))
    assert all(in_orthanc(orthanc, stored.orthanc_ids[uid]) for uid in stored.sop_uids(1))
    study = study_json(client, radiologist, stored.study_id)
    assert (study["instanceCount"], study["seriesCount"]) == (3, 1)
    assert [s["seriesInstanceUID"] for s in study["series"]] == [stored.series_uid(1)]
    assert listed_uids(client, radiologist, stored.study_id) == set(stored.sop_uids(1))
    gone = client.get(
        f"/api/studies/{stored.study_id}/series/{stored.series_uid(0)}/images", headers=radiologist
    )
    assert gone.status_code == 404
    with Session(engine) as session:
        assert session.exec(select(Series).where(Series.study_id == stored.study_id)).all()
        assert len(session.exec(select(Image).where(Image.study_id == stored.study_id)).all()) == 3

    # The record, for administrators only, newest first.
    listed = client.get(f"/api/studies/{stored.study_id}/removals", headers=admin_headers)
    assert listed.status_code == 200, listed.text
    assert [(r["scope"], r["state"]) for r in listed.json()["items"]] == [
        ("SERIES", "DONE"),
        ("IMAGE", "DONE"),
    ]
    assert (
        client.get(f"/api/studies/{stored.study_id}/removals", headers=technologist).status_code
        == 403
    )

    # Audited: who, why, which; no patient data.
    [image_event] = audit_events(engine, "image.rejected")
    assert (image_event.actor, image_event.entity_id) == ("technologist-user", str(first_id))
    assert image_event.detail["reason"] == "QUALITY"
    assert image_event.detail["reason_code"] == "113001"
    assert image_event.detail["sop_instance_uids"] == [first]
    assert image_event.detail["study_id"] == stored.study_id
    [series_event] = audit_events(engine, "series.rejected")
    assert series_event.actor == "radiologist-user"
    assert series_event.entity_id == stored.series_uid(0)
    assert (series_event.detail["instance_count"], series_event.detail["removal_id"]) == (
        2,
        body["id"],
    )
    completed = audit_events(engine, "image.removal_completed") + audit_events(
        engine, "series.removal_completed"
    )
    assert [e.detail["images_dropped"] for e in completed] == [1, 2]
    for event in [image_event, series_event, *completed]:
        assert_no_patient_data(str(event.detail), stored.images)

    # The last series too (an administrator, retention): nothing is left dangling, in Orthanc
    # (its study goes with its last instance) or in the sidecar; the forged copy stays.
    orthanc_study = httpx.get(
        f"{orthanc.url}/instances/{stored.orthanc_ids[stored.sop_uids(1)[0]]}/study"
    ).json()["ID"]
    last = reject_series(client, admin_headers, stored.study_id, stored.series_uid(1), "RETENTION")
    assert last.status_code == 200, last.text
    assert httpx.get(f"{orthanc.url}/studies/{orthanc_study}").status_code == 404
    assert in_orthanc(orthanc, other_copy)
    study = study_json(client, admin_headers, stored.study_id)
    assert (study["instanceCount"], study["seriesCount"], study["series"]) == (0, 0, [])
    with Session(engine) as session:
        assert session.exec(select(Series).where(Series.study_id == stored.study_id)).all() == []
        assert session.exec(select(Image).where(Image.study_id == stored.study_id)).all() == []
    httpx.delete(f"{orthanc.url}/instances/{other_copy}").raise_for_status()

    # Orthanc holds nothing of the study now: the deletion follower takes it out of the lists
    # (no report, finding or order); what was removed, why and by whom stays readable.
    watch = DeletionWatch(engine, OrthancClient(orthanc.url), reconcile_every=3600)
    watch.run_due(lambda: False)  # the first round reconciles: its Orthanc study is gone
    assert client.get(f"/api/studies/{stored.study_id}", headers=admin_headers).status_code == 404
    listed = client.get(f"/api/studies/{stored.study_id}/removals", headers=admin_headers)
    assert listed.status_code == 200, listed.text
    assert [r["scope"] for r in listed.json()["items"]] == ["SERIES", "SERIES", "IMAGE"]


def test_reasons_roles_and_care_scope_refuse_and_nothing_is_removed(
    app: FastAPI,
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    radiologist: dict[str, str],
    headers_for: HeadersFor,
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    stored = store(orthanc, engine, tmp_path / "b")
    target = image_id(engine, stored.sop_uids(0)[0])

    missing = reject_image(client, technologist, target, None)
    assert missing.status_code == 422 and "reason" in missing.text
    unknown = reject_image(client, technologist, target, "BORED")
    assert unknown.status_code == 422 and "reason" in unknown.text
    lower = reject_image(client, technologist, target, "quality")
    assert lower.status_code == 422
    for role in (Role.PHYSICIAN, Role.INTEGRATION):
        assert reject_image(client, headers_for(role), target, "QUALITY").status_code == 403
    # RETENTION is for administrators; PATIENT_SAFETY for radiologists and administrators.
    for reason in ("RETENTION", "PATIENT_SAFETY"):
        refused = reject_image(client, technologist, target, reason)
        assert refused.status_code == 403 and reason in refused.text
        refused = reject_series(client, technologist, stored.study_id, stored.series_uid(0), reason)
        assert refused.status_code == 403
    assert reject_image(client, radiologist, target, "RETENTION").status_code == 403
    # Outside the caller's facilities: as if it did not exist.
    with Session(engine) as session:
        user = session.exec(select(User).where(User.username == "technologist-user")).one()
        user.facilities = ["ELSEWHERE"]
        session.add(user)
        session.commit()
    limited = login(client, "technologist-user", "user-password-for-tests")
    assert reject_image(client, limited, target, "QUALITY").status_code == 404
    assert (
        reject_series(client, limited, stored.study_id, stored.series_uid(0), "QUALITY").status_code
        == 404
    )
    # Unknown or forged: 404.
    assert reject_image(client, admin_headers, 999999, "QUALITY").status_code == 404
    for uid in ("1.2.3.4", generate_uid(), "x" * 64):
        assert (
            reject_series(client, admin_headers, stored.study_id, uid, "QUALITY").status_code == 404
        )
    other = store(orthanc, engine, tmp_path / "c")
    # Another study's series under this study's id: not this study's.
    assert (
        reject_series(
            client, admin_headers, stored.study_id, other.series_uid(0), "QUALITY"
        ).status_code
        == 404
    )

    assert removals(engine) == []
    assert all(in_orthanc(orthanc, i) for i in stored.orthanc_ids.values())
    assert study_json(client, admin_headers, stored.study_id)["instanceCount"] == 6
    assert audit_events(engine, "image.rejected") == []


def test_a_signed_report_allows_only_an_administrators_patient_safety_removal_and_is_flagged(
    client: TestClient,
    admin_headers: dict[str, str],
    technologist: dict[str, str],
    radiologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    stored = store(orthanc, engine, tmp_path / "d")
    created = client.post(
        "/api/reports", headers=radiologist, json={"studyId": stored.study_id, **SECTIONS}
    )
    assert created.status_code == 201, created.text
    report_id = created.json()["id"]
    signed = client.post(f"/api/reports/{report_id}/sign", headers=radiologist)
    assert signed.status_code == 200, signed.text
    assert signed.json()["amendmentRequiredReason"] is None
    target = image_id(engine, stored.sop_uids(0)[0])

    for headers, reason in (
        (technologist, "QUALITY"),
        (radiologist, "PATIENT_SAFETY"),
        (admin_headers, "QUALITY"),
        (admin_headers, "WRONG_WORKLIST_ENTRY"),
    ):
        refused = reject_image(client, headers, target, reason)
        assert refused.status_code == 409, refused.text
        assert "signed report" in refused.json()["error"]["message"]
        assert "PATIENT_SAFETY" in refused.json()["error"]["message"]
    refused = reject_series(
        client, admin_headers, stored.study_id, stored.series_uid(0), "RETENTION"
    )
    assert refused.status_code == 409
    assert removals(engine) == []
    assert in_orthanc(orthanc, stored.orthanc_ids[stored.sop_uids(0)[0]])

    answer = reject_image(client, admin_headers, target, "PATIENT_SAFETY")

    assert answer.status_code == 200, answer.text
    assert answer.json()["reportId"] == report_id and answer.json()["reasonCode"] == "113037"
    assert not in_orthanc(orthanc, stored.orthanc_ids[stored.sop_uids(0)[0]])
    report = client.get(f"/api/reports/{report_id}", headers=radiologist).json()
    assert report["status"] == "FINAL"
    assert "113037" in report["amendmentRequiredReason"]
    assert report["version"] > signed.json()["version"]
    [flagged] = audit_events(engine, "report.amendment_required")
    assert (flagged.actor, flagged.entity_id) == ("admin", str(report_id))
    assert flagged.detail["removal_id"] == answer.json()["id"]

    amended = client.post(
        f"/api/reports/{report_id}/amend",
        headers=radiologist,
        json={"impression": "Reviewed without the withdrawn image.", "reason": "images removed"},
    )
    assert amended.status_code == 200, amended.text
    assert amended.json()["amendmentRequiredReason"] is None


def test_orthanc_down_queues_the_removal_and_the_worker_completes_it(
    app: FastAPI,
    client: TestClient,
    settings: Settings,
    technologist: dict[str, str],
    admin_headers: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    stored = store(orthanc, engine, tmp_path / "e")
    image_uid = stored.sop_uids(0)[0]
    # The requests of a second instance of the sidecar on the same database, whose Orthanc is
    # down (its background workers not started: the running app's node holds their leases).
    down = create_app(settings.model_copy(update={"orthanc_url": CLOSED_ORTHANC_URL}))
    with contextlib.closing(TestClient(down)) as down_client:
        answer = reject_image(down_client, technologist, image_id(engine, image_uid), "QUALITY")
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert (body["state"], body["attempts"]) == ("RETRYING", 1)
        assert "ConnectError" in body["lastError"]
        series_answer = reject_series(
            down_client, admin_headers, stored.study_id, stored.series_uid(1), "RETENTION"
        )
        assert series_answer.status_code == 202, series_answer.text
        # Asked again while waiting: refused, naming the waiting removal.
        again = reject_image(down_client, technologist, image_id(engine, image_uid), "QUALITY")
        assert again.status_code == 409 and f"removal {body['id']}" in again.text
        health = down_client.get("/health").json()["imageRemovals"]
        assert (health["queued"], health["retrying"]) == (0, 2)
        assert "ConnectError" in health["lastError"]

    # Nothing removed yet: Orthanc holds them, the lists still show them.
    assert in_orthanc(orthanc, stored.orthanc_ids[image_uid])
    assert study_json(client, technologist, stored.study_id)["instanceCount"] == 6
    assert image_uid in listed_uids(client, technologist, stored.study_id)

    # Orthanc answers again: the worker (its clock past the retry delay) completes both.
    remover = ImageRemover(
        engine, OrthancClient(orthanc.url), clock=lambda: utcnow() + timedelta(hours=1)
    )
    assert remover.run_once() is None

    assert not in_orthanc(orthanc, stored.orthanc_ids[image_uid])
    assert not any(in_orthanc(orthanc, stored.orthanc_ids[u]) for u in stored.sop_uids(1))
    assert all(in_orthanc(orthanc, stored.orthanc_ids[u]) for u in stored.sop_uids(0)[1:])
    assert [(r.state, r.attempts) for r in removals(engine)] == [
        (RemovalState.DONE, 1),
        (RemovalState.DONE, 1),
    ]
    study = study_json(client, technologist, stored.study_id)
    assert (study["instanceCount"], study["seriesCount"]) == (2, 1)
    assert listed_uids(client, technologist, stored.study_id) == set(stored.sop_uids(0)[1:])
    completed = audit_events(engine, "image.removal_completed")
    assert [e.actor for e in completed] == ["system:image-removals"]
    health = client.get("/health").json()["imageRemovals"]
    assert (health["queued"], health["retrying"], health["lastError"]) == (0, 0, None)
    # Done already: another round finds nothing to do and counts nothing twice.
    assert remover.run_once() is None
    assert study_json(client, technologist, stored.study_id)["instanceCount"] == 2


def test_a_removal_left_by_a_crashed_request_is_taken_over_after_its_lease(
    app: FastAPI,
    client: TestClient,
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    """The request recorded the removal, then died before asking Orthanc (kill -9)."""
    from sidecar.studies import rejection

    stored = store(orthanc, engine, tmp_path / "f")
    with Session(engine) as session:
        user = session.exec(select(User).where(User.username == "technologist-user")).one()
        study = session.get(Study, stored.study_id)
        assert study is not None
        target = rejection.series_target(session, study, stored.series_uid(0))
        rejection.request_removal(session, target, RejectionReason.QUALITY, user, now=utcnow())
        session.commit()
    remover = ImageRemover(engine, OrthancClient(orthanc.url))
    # Within the lease the worker leaves it to the request.
    assert remover.run_once() is not None
    assert all(in_orthanc(orthanc, stored.orthanc_ids[u]) for u in stored.sop_uids(0))
    later = ImageRemover(
        engine, OrthancClient(orthanc.url), clock=lambda: utcnow() + timedelta(minutes=2)
    )
    assert later.run_once() is None
    assert not any(in_orthanc(orthanc, stored.orthanc_ids[u]) for u in stored.sop_uids(0))
    assert study_json(client, technologist, stored.study_id)["seriesCount"] == 1


def test_a_copy_orthanc_refiled_under_a_corrected_patient_is_the_one_removed(
    client: TestClient,
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    """The image-update worker re-filed the study under another patient id (new Orthanc ids)
    and the sidecar's rows still name the old ones: the removal finds the instance by its UID."""
    stored = store(orthanc, engine, tmp_path / "g")
    uid = stored.sop_uids(0)[0]
    outcome = rewrite_study(
        OrthancClient(orthanc.url), stored.images.study_instance_uid, {"PatientID": "REFILED-1"}
    )
    assert outcome.instances == 6 and outcome.not_kept == ()
    assert not in_orthanc(orthanc, stored.orthanc_ids[uid])  # the old id is gone already
    [copy] = OrthancClient(orthanc.url).resources_with_uid(uid, "Instance")

    answer = reject_image(client, technologist, image_id(engine, uid), "WRONG_WORKLIST_ENTRY")

    assert answer.status_code == 200, answer.text
    assert OrthancClient(orthanc.url).resources_with_uid(uid, "Instance") == []
    assert not in_orthanc(orthanc, copy)
    assert study_json(client, technologist, stored.study_id)["instanceCount"] == 5


def test_a_removal_waits_for_the_patients_image_update_so_the_image_cannot_come_back(
    client: TestClient,
    technologist: dict[str, str],
    orthanc: OrthancProcess,
    engine: Engine,
    tmp_path: Path,
) -> None:
    """The image-update worker writes a copy of each instance, then deletes the original: a
    copy written after the removal deleted the image would bring it back. While an update of
    the study waits or runs, the removal deletes but is not done; it deletes again after."""
    stored = store(orthanc, engine, tmp_path / "h")
    uid = stored.sop_uids(0)[0]
    with Session(engine) as session:
        now = utcnow()
        session.add(
            ImageUpdate(
                study_id=stored.study_id,
                status=ImageUpdateStatus.PENDING,
                cause="merge",
                queued_at=now,
                next_attempt_at=now,
            )
        )
        session.commit()

    answer = reject_image(client, technologist, image_id(engine, uid), "QUALITY")

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["state"] == "RETRYING" and "for their patient" in body["lastError"]
    assert OrthancClient(orthanc.url).resources_with_uid(uid, "Instance") == []
    # The update, in flight, stores its copy of the image after the removal's delete.
    [instance] = [i for i in stored.images.instances if i.sop_instance_uid == uid]
    httpx.post(f"{orthanc.url}/instances", content=instance.path.read_bytes()).raise_for_status()
    remover = ImageRemover(
        engine, OrthancClient(orthanc.url), clock=lambda: utcnow() + timedelta(minutes=1)
    )
    assert remover.run_once() is not None  # the update still waits: so does the removal
    assert removals(engine)[0].state is RemovalState.RETRYING
    with Session(engine) as session:
        update_row = session.get(ImageUpdate, stored.study_id)
        assert update_row is not None
        update_row.status, update_row.completed_at = ImageUpdateStatus.DONE, utcnow()
        session.add(update_row)
        session.commit()

    later = ImageRemover(
        engine, OrthancClient(orthanc.url), clock=lambda: utcnow() + timedelta(minutes=2)
    )
    assert later.run_once() is None

    assert OrthancClient(orthanc.url).resources_with_uid(uid, "Instance") == []
    assert removals(engine)[0].state is RemovalState.DONE
    assert uid not in listed_uids(client, technologist, stored.study_id)
    assert study_json(client, technologist, stored.study_id)["instanceCount"] == 5


# -- the rows and counts step, alone ---------------------------------------------------------


def test_dropping_rows_counts_once_and_keeps_a_series_whose_rows_lag(engine: Engine) -> None:
    uid = f"{UID_ROOT}.8801"
    study_id = seed_study(
        engine,
        orthanc_study(
            uid,
            series=[SeriesSpec(uid=f"{uid}.1", instances=3), SeriesSpec(uid=f"{uid}.2", number=2)],
        ),
    )
    with Session(engine) as session:
        # Orthanc counts 5 instances in the second series; only 2 have rows so far.
        series = session.exec(select(Series).where(Series.series_instance_uid == f"{uid}.2")).one()
        series.instance_count = 5
        session.add(series)
        session.commit()
    for _ in range(2):  # a retried removal: the second run changes nothing
        with Session(engine) as session:
            dropped = drop_image_rows(
                session, study_id, sop_instance_uids=[f"{uid}.2.1", f"{uid}.1.1", "1.2.999"]
            )
            session.commit()
    assert dropped.images == 0
    with Session(engine) as session:
        counts = {
            s.series_instance_uid: s.instance_count
            for s in session.exec(select(Series).where(Series.study_id == study_id))
        }
        study = session.get(Study, study_id)
        assert study is not None
        assert counts == {f"{uid}.1": 2, f"{uid}.2": 4}
        assert (study.instance_count, study.series_count) == (6, 2)
    with Session(engine) as session:
        dropped = drop_image_rows(session, study_id, series_instance_uids=[f"{uid}.1"])
        session.commit()
        assert (dropped.images, dropped.series) == (2, (f"{uid}.1",))
        assert (dropped.study_instance_count, dropped.study_series_count) == (4, 1)
