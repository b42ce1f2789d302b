"""De-identified copies abandoned midway (issue 15, review of item 8): the sidecar killed while
Orthanc made a copy, or giving up after the timeout, leaves a copy "creating" and parts of it
in Orthanc. The sweep deletes them once it is abandoned, marks it failed and audits it; Orthanc
down: nothing is marked; a copy still being made is left alone; the sync keeps passing over the
copy's UID afterwards. Against the run's plain Orthanc; both databases."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.core.models import utcnow
from sidecar.ingest.orthanc_client import OrthancClient, OrthancUnavailable
from sidecar.ingest.sync import OrthancSync, RoundReport
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.studies.deidentification import (
    ABANDONED_AFTER,
    ANONYMIZE_TIMEOUT,
    CopyStatus,
    DeidentifiedCopy,
    orthanc_options,
    record_copy,
)
from sidecar.studies.deidentify_sweep import DeidentificationSweep, wait_for_job
from sidecar.studies.models import Study, StudyStatus

from builders import audit_events
from dicom_factory import make_study
from finding_helpers import FakeClock
from stack import free_port
from testapp import app_settings, engine_of, login

pytestmark = pytest.mark.orthanc


def copy_in_orthanc(orthanc: OrthancClient, source_id: str, copy: DeidentifiedCopy) -> str:
    """Orthanc's copy of the source under the copy's chosen UID, as its job would make it."""
    job = wait_for_job(
        orthanc, orthanc.start_anonymize_study(source_id, orthanc_options(copy)), timeout=60
    )
    assert job is not None and job["State"] == "Success", job
    return str(job["ID"])


def held_under(orthanc: OrthancClient, uid: str) -> dict[str, str]:
    return orthanc.studies_with_uid(uid)


def test_abandoned_copies_are_deleted_from_orthanc_marked_failed_and_never_registered(
    database_url: str, tmp_path: Path, plain_orthanc: OrthancProcess
) -> None:
    orthanc = OrthancClient(plain_orthanc.url, timeout=30)
    images = make_study(tmp_path / "source", series_count=2, instances_per_series=2)
    source_id = ""
    for path in images.files:
        stored = httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes())
        stored.raise_for_status()
        source_id = stored.json()["ParentStudy"]
    clock = FakeClock(utcnow())
    app = create_app(app_settings(database_url, tmp_path), orthanc=orthanc, clock=clock)
    with TestClient(app) as client:
        engine = engine_of(app)
        with Session(engine) as session:
            # Killed after Orthanc made (part of) it: recorded long ago, its job over.
            stale = record_copy(session, 41, "teaching", "admin", clock() - ABANDONED_AFTER)
            stale.orthanc_job_id = copy_in_orthanc(orthanc, source_id, stale)
            session.add(stale)
            session.commit()
            # Part of it only: one of its images missing, as when Orthanc is interrupted.
            (partial_id,) = held_under(orthanc, stale.study_instance_uid)
            first = orthanc.study_instance_ids(partial_id)[0]
            orthanc.delete_instance(first)
            # Still being made by a live request: recorded just now.
            fresh = record_copy(session, 42, "research", "admin", clock())
            copy_in_orthanc(orthanc, source_id, fresh)
            stale_id, fresh_id = stale.id, fresh.id
            stale_uid, fresh_uid = stale.study_instance_uid, fresh.study_instance_uid

        health = client.get("/health").json()["deidentifiedCopies"]
        assert (health["creating"], health["waitingForCleanup"]) == (2, 1)

        # Orthanc down: nothing is marked, nothing deleted; tried again later.
        down = DeidentificationSweep(
            engine, OrthancClient(f"http://127.0.0.1:{free_port()}"), clock=clock
        )
        assert down.run_once() == 60.0
        assert down.last_error is not None
        with Session(engine) as session:
            assert session.get(DeidentifiedCopy, stale_id).status is CopyStatus.CREATING  # type: ignore[union-attr]
        assert len(held_under(orthanc, stale_uid)) == 1
        assert audit_events(engine, "study.deidentification_abandoned") == []

        # Orthanc back: the abandoned copy is deleted and failed; the fresh one is left alone,
        # and the next round is planned for when it would be abandoned.
        sweep = DeidentificationSweep(engine, orthanc, clock=clock)
        next_round = sweep.run_once()
        assert next_round is not None
        assert 0 < next_round <= ABANDONED_AFTER.total_seconds()
        assert held_under(orthanc, stale_uid) == {}
        assert len(held_under(orthanc, fresh_uid)) == 1
        with Session(engine) as session:
            swept = session.get(DeidentifiedCopy, stale_id)
            kept = session.get(DeidentifiedCopy, fresh_id)
            assert swept is not None and kept is not None
            assert swept.status is CopyStatus.FAILED
            assert swept.failure_reason and swept.failure_reason.startswith("abandoned")
            assert kept.status is CopyStatus.CREATING
        (event,) = audit_events(engine, "study.deidentification_abandoned")
        assert (event.actor, event.entity_id) == ("deidentification-sweep", "41")
        assert event.detail["copy_id"] == stale_id
        assert event.detail["orthanc_studies_deleted"] == 1
        health = client.get("/health").json()["deidentifiedCopies"]
        assert (health["creating"], health["waitingForCleanup"]) == (1, 0)
        assert health["lastError"] is None

        # A piece of the swept copy arriving late is still never registered.
        with Session(engine) as session:
            late = session.get(DeidentifiedCopy, stale_id)
            assert late is not None
            copy_in_orthanc(orthanc, source_id, late)
        (late_id,) = held_under(orthanc, stale_uid)
        sync = OrthancSync(engine, orthanc, interval=1, now=clock)
        sync.enqueue([late_id], "plugin")
        report = RoundReport()
        sync.process_pending(report)
        assert report.passed_over == [late_id]
        assert report.registered == []

        # Once the fresh copy is old enough, it is swept as well.
        clock.advance(seconds=ABANDONED_AFTER.total_seconds())
        assert sweep.run_once() is None
        assert held_under(orthanc, fresh_uid) == {}
        with Session(engine) as session:
            assert session.get(DeidentifiedCopy, fresh_id).status is CopyStatus.FAILED  # type: ignore[union-attr]
        orthanc.delete_study(late_id)
        orthanc.delete_study(source_id)


def test_the_bound_outlasts_the_wait_for_orthanc() -> None:
    """A copy the request still waits for is never taken for abandoned."""
    assert timedelta(seconds=ANONYMIZE_TIMEOUT) < ABANDONED_AFTER


def test_a_copy_orthanc_does_not_finish_in_time_is_left_for_the_sweep(
    database_url: str,
    tmp_path: Path,
    plain_orthanc: OrthancProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request gives up (the wait's deadline passed: simulated, the real job runs on):
    503, Orthanc asked to stop, nothing deleted while Orthanc may write; the sweep deletes
    what it wrote once the copy is abandoned and its job over."""
    orthanc = OrthancClient(plain_orthanc.url, timeout=30)
    images = make_study(tmp_path / "source", series_count=1, instances_per_series=2)
    source_id = ""
    for path in images.files:
        stored = httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes())
        stored.raise_for_status()
        source_id = stored.json()["ParentStudy"]
    clock = FakeClock(utcnow())
    settings = app_settings(database_url, tmp_path)
    app = create_app(settings, orthanc=orthanc, clock=clock)
    cancelled: list[str] = []

    def gave_up(client: OrthancClient, job_id: str, *, timeout: float) -> None:
        wait_for_job(client, job_id, timeout=60)  # Orthanc wrote it all meanwhile
        cancelled.append(job_id)

    monkeypatch.setattr("sidecar.studies.deidentify_router.wait_for_job", gave_up)
    with TestClient(app) as client:
        engine = engine_of(app)
        with Session(engine) as session:
            study = Study(
                study_instance_uid=images.study_instance_uid,
                patient_id=images.patient_id,
                patient_name=images.patient_name,
                accession_number=images.accession_number,
                orthanc_id=source_id,
                status=StudyStatus.COMPLETED,
            )
            session.add(study)
            session.commit()
            study_id = study.id
        admin = login(client, "admin", settings.admin_password)
        answer = client.post(
            f"/api/studies/{study_id}/deidentify", json={"purpose": "teaching"}, headers=admin
        )
        assert answer.status_code == 503, answer.text
        assert "will be deleted" in answer.json()["error"]["message"]
        with Session(engine) as session:
            (copy,) = session.exec(select(DeidentifiedCopy)).all()
            assert copy.status is CopyStatus.CREATING
            assert copy.orthanc_job_id == cancelled[0]
            assert copy.failure_reason == "Orthanc did not finish the copy in time"
            uid, copy_id = copy.study_instance_uid, copy.id
        assert len(held_under(orthanc, uid)) == 1  # not deleted while Orthanc may write
        (failed,) = audit_events(engine, "study.deidentify_failed")
        assert failed.detail["copy_id"] == copy_id

        sweep = DeidentificationSweep(engine, orthanc, clock=clock)
        assert sweep.run_once() is not None  # too early: left alone
        assert len(held_under(orthanc, uid)) == 1
        clock.advance(seconds=ABANDONED_AFTER.total_seconds())
        assert sweep.run_once() is None
        assert held_under(orthanc, uid) == {}
        with Session(engine) as session:
            swept = session.get(DeidentifiedCopy, copy_id)
            assert swept is not None and swept.status is CopyStatus.FAILED
            assert swept.failure_reason == "Orthanc did not finish the copy in time"
        (event,) = audit_events(engine, "study.deidentification_abandoned")
        assert event.detail["reason"] == "Orthanc did not finish the copy in time"
        orthanc.delete_study(source_id)


def test_a_failed_copy_orthanc_cannot_delete_now_is_left_for_the_sweep(
    database_url: str,
    tmp_path: Path,
    plain_orthanc: OrthancProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Orthanc's job ends in failure and Orthanc stops answering before what it wrote is
    deleted: the copy is not marked failed with parts left; the sweep deletes them later."""
    orthanc = OrthancClient(plain_orthanc.url, timeout=30)
    images = make_study(tmp_path / "source", series_count=1, instances_per_series=1)
    stored = httpx.post(f"{plain_orthanc.url}/instances", content=images.files[0].read_bytes())
    source_id = stored.json()["ParentStudy"]
    clock = FakeClock(utcnow())
    settings = app_settings(database_url, tmp_path)
    app = create_app(settings, orthanc=orthanc, clock=clock)

    def failed_job(client: OrthancClient, job_id: str, *, timeout: float) -> dict[str, str]:
        wait_for_job(client, job_id, timeout=60)  # it wrote the copy, then "failed"
        monkeypatch.setattr(client, "studies_with_uid", down)
        return {"State": "Failure"}

    def down(uid: str) -> dict[str, str]:
        raise OrthancUnavailable("POST /tools/lookup: ConnectError")

    monkeypatch.setattr("sidecar.studies.deidentify_router.wait_for_job", failed_job)
    with TestClient(app) as client:
        engine = engine_of(app)
        with Session(engine) as session:
            study = Study(
                study_instance_uid=images.study_instance_uid,
                patient_id=images.patient_id,
                patient_name=images.patient_name,
                orthanc_id=source_id,
                status=StudyStatus.COMPLETED,
            )
            session.add(study)
            session.commit()
            study_id = study.id
        admin = login(client, "admin", settings.admin_password)
        answer = client.post(
            f"/api/studies/{study_id}/deidentify", json={"purpose": "research"}, headers=admin
        )
        assert answer.status_code == 409, answer.text
        monkeypatch.undo()
        with Session(engine) as session:
            (copy,) = session.exec(select(DeidentifiedCopy)).all()
            assert copy.status is CopyStatus.CREATING
            assert copy.failure_reason == "Orthanc could not copy every image"
            uid, copy_id = copy.study_instance_uid, copy.id
        assert len(orthanc.studies_with_uid(uid)) == 1
        clock.advance(seconds=ABANDONED_AFTER.total_seconds())
        assert DeidentificationSweep(engine, orthanc, clock=clock).run_once() is None
        assert orthanc.studies_with_uid(uid) == {}
        with Session(engine) as session:
            swept = session.get(DeidentifiedCopy, copy_id)
            assert swept is not None and swept.status is CopyStatus.FAILED
        orthanc.delete_study(source_id)
