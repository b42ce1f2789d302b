"""Deletions made in Orthanc, followed by the sidecar (sidecar.ingest.deletions and
deletion_watch) against the real Orthanc without the plugin: the tests hand the watch the notices
the plugin would send. A patient-merge rewrite (new Orthanc ids, same UIDs) is not a deletion;
an instance, a series and a study deleted in Orthanc leave the sidecar; Orthanc unreachable,
failing or reset is never taken for a deletion. Both databases; the worker's thread is never
started: tests call `run_due` themselves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.findings.models import CriticalFinding, Severity
from sidecar.ingest.deletion_watch import DeletionWatch
from sidecar.ingest.dicom_mapping import image_records, study_record
from sidecar.ingest.models import ChangesCursor, DeletionCheck
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.orders.models import ImagingOrder, Modality
from sidecar.patients.image_rewrite import REASSIGNMENT_METADATA, rewrite_study
from sidecar.studies.models import Image, Series, Study, StudyPublic, StudyStatus
from sidecar.studies.registry import register_images, register_study

from builders import audit_events
from dicom_factory import make_study
from stack import free_port
from testapp import TEST_PLUGIN_TOKEN, engine_of

pytestmark = pytest.mark.orthanc


@pytest.fixture
def orthanc(plain_orthanc: OrthancProcess) -> Iterator[OrthancClient]:
    client = OrthancClient(plain_orthanc.url, timeout=30)
    yield client
    client.close()


def register(engine: Engine, client: OrthancClient, uid: str) -> int:
    """Registers what Orthanc holds under the UID, as the sync worker does."""
    [orthanc_id] = client.studies_with_uid(uid)
    record = study_record(client.study(orthanc_id), client.study_series(orthanc_id))
    with Session(engine) as session:
        study = register_study(session, record)
        register_images(session, study, image_records(client.study_instances_tags(orthanc_id)))
        session.commit()
        assert study.id is not None
        return study.id


def sidecar_view(engine: Engine, study_id: int) -> dict[str, Any]:
    with Session(engine) as session:
        study = session.get(Study, study_id)
        assert study is not None
        series = session.exec(select(Series).where(Series.study_id == study_id)).all()
        images = session.exec(select(Image).where(Image.study_id == study_id)).all()
        queued = session.exec(select(DeletionCheck)).all()
        return {
            "orthanc_id": study.orthanc_id,
            "counts": (study.series_count, study.instance_count),
            "series": sorted((s.series_instance_uid, s.instance_count) for s in series),
            "images": {i.sop_instance_uid: i.orthanc_id for i in images},
            "images_deleted_at": study.images_deleted_at,
            "removed_at": study.removed_at,
            "queued": len(queued),
        }


def orthanc_instances(client: OrthancClient, uid: str) -> dict[str, str]:
    """SOP Instance UID -> Orthanc id of every instance Orthanc holds under the study UID."""
    held = {}
    for orthanc_id in client.studies_with_uid(uid):
        for instance in client.study_instances(orthanc_id):
            held[instance["MainDicomTags"]["SOPInstanceUID"]] = instance["ID"]
    return held


def test_a_rewrite_is_followed_and_only_what_orthanc_lost_is_dropped(
    engine: Engine, orthanc: OrthancClient, plain_orthanc: OrthancProcess, tmp_path: Path
) -> None:
    client = orthanc
    generated = make_study(
        tmp_path / "dicom", series_count=2, instances_per_series=2, patient_id="DEL-REWRITE-1"
    )
    for path in generated.files:
        httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    uid = generated.study_instance_uid
    study_id = register(engine, client, uid)
    before = sidecar_view(engine, study_id)
    old_instance_ids = list(before["images"].values())
    watch = DeletionWatch(engine, client, reconcile_every=3600)
    watch.run_due(lambda: False)  # the first round reconciles: nothing of this study is gone

    # Forged notices (or late ones) for what Orthanc still holds: checked, nothing dropped.
    [series_id, _] = [s["ID"] for s in client.study_series(str(before["orthanc_id"]))]
    assert watch.notice("Study", str(before["orthanc_id"])) == study_id
    assert watch.notice("Series", series_id) == study_id
    assert watch.notice("Instance", old_instance_ids[0]) == study_id
    watch.run_due(lambda: False)
    assert sidecar_view(engine, study_id) == before
    assert audit_events(engine, "study.images_deleted_in_orthanc") == []

    # A patient merge rewrites every instance: copies under new Orthanc ids, originals deleted
    # (the study's row names its new patient first: sidecar.patients.image_updates rewrites
    # Orthanc to the row's values).
    with Session(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        row.patient_id = "DEL-REWRITE-2"
        session.add(row)
        session.commit()
    rewrite_study(client, uid, {"PatientID": "DEL-REWRITE-2"})
    for old_id in old_instance_ids:  # the plugin's notices of the deleted originals
        assert watch.notice("Instance", old_id) == study_id
    watch.run_due(lambda: False)

    after = sidecar_view(engine, study_id)
    held = orthanc_instances(client, uid)
    assert after["images"] == held  # every image kept, under its new Orthanc id
    assert set(held.values()).isdisjoint(old_instance_ids)
    assert after["orthanc_id"] == next(iter(client.studies_with_uid(uid)))
    assert after["orthanc_id"] != before["orthanc_id"]
    assert after["counts"] == (2, 4) and after["series"] == before["series"]
    assert after["images_deleted_at"] is None and after["queued"] == 0
    assert [e.entity_id for e in audit_events(engine, "study.orthanc_id_changed")] == [
        str(study_id)
    ]
    assert audit_events(engine, "study.images_deleted_in_orthanc") == []

    # One instance deleted in Orthanc: its image goes, the counts follow.
    first_series, second_series = generated.series
    gone_uid = first_series.sop_instance_uids[0]
    httpx.delete(f"{plain_orthanc.url}/instances/{held[gone_uid]}").raise_for_status()
    assert watch.notice("Instance", held[gone_uid]) == study_id
    watch.run_due(lambda: False)
    view = sidecar_view(engine, study_id)
    assert gone_uid not in view["images"] and len(view["images"]) == 3
    assert view["counts"] == (2, 3)
    assert dict(view["series"]) == {
        first_series.series_instance_uid: 1,
        second_series.series_instance_uid: 2,
    }
    [event] = audit_events(engine, "study.images_deleted_in_orthanc")
    assert event.detail["sop_instance_uids"] == [gone_uid]
    assert event.actor == "system:orthanc-sync"

    # A whole series deleted: its row goes too.
    series_orthanc_id = client.study_series(str(view["orthanc_id"]))
    [second] = [
        s["ID"]
        for s in series_orthanc_id
        if s["MainDicomTags"]["SeriesInstanceUID"] == second_series.series_instance_uid
    ]
    httpx.delete(f"{plain_orthanc.url}/series/{second}").raise_for_status()
    assert watch.notice("Series", second) == study_id
    watch.run_due(lambda: False)
    view = sidecar_view(engine, study_id)
    assert view["series"] == [(first_series.series_instance_uid, 1)]
    assert view["counts"] == (1, 1) and len(view["images"]) == 1

    # The study deleted: nothing refers to it, so it is removed from view; its row stays.
    httpx.delete(f"{plain_orthanc.url}/studies/{view['orthanc_id']}").raise_for_status()
    assert watch.notice("Study", str(view["orthanc_id"])) == study_id
    watch.run_due(lambda: False)
    view = sidecar_view(engine, study_id)
    assert view["images"] == {} and view["series"] == [] and view["counts"] == (0, 0)
    assert view["images_deleted_at"] is not None and view["removed_at"] is not None
    assert view["orthanc_id"] is None and view["queued"] == 0
    whole = audit_events(engine, "study.images_deleted_in_orthanc")[-1]
    assert whole.detail["whole_study"] is True and whole.detail["removed"] is True
    # Notices of what is gone already find nothing to follow.
    assert watch.notice("Instance", old_instance_ids[0]) is None

    # The images sent again: the study re-opens, the same row.
    for path in generated.files:
        httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    assert register(engine, client, uid) == study_id
    view = sidecar_view(engine, study_id)
    assert view["images_deleted_at"] is None and view["removed_at"] is None
    assert view["counts"] == (2, 4)


def seeded_study(
    engine: Engine, orthanc_id: str, *, uid: str = "1.2.826.0.1.3680043.8.498.77"
) -> int:
    with Session(engine) as session:
        study = Study(
            study_instance_uid=uid,
            orthanc_id=orthanc_id,
            series_count=1,
            instance_count=1,
        )
        session.add(study)
        session.flush()
        assert study.id is not None
        series = Series(study_id=study.id, series_instance_uid=uid + ".4", instance_count=1)
        session.add(series)
        session.flush()
        assert series.id is not None
        session.add(Image(study_id=study.id, series_id=series.id, sop_instance_uid=uid + ".5"))
        session.commit()
        return study.id


ORTHANC_ID = "0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9-01234567"


def mock_orthanc(
    studies: list[str] | None, lookup: list[Any] | None, last_change: int = 0
) -> OrthancClient:
    """An Orthanc answering `/studies` and `/tools/lookup` with these lists (None: HTTP 500),
    and `/changes` with this last sequence number."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/changes":
            return httpx.Response(200, json={"Changes": [], "Done": True, "Last": last_change})
        listed = studies if request.url.path == "/studies" else lookup
        if listed is None:
            return httpx.Response(500, json={"Message": "Internal error"})
        return httpx.Response(200, content=json.dumps(listed))

    return OrthancClient("http://orthanc.test", transport=httpx.MockTransport(answer))


def test_orthanc_unreachable_failing_or_reset_is_never_a_deletion(engine: Engine) -> None:
    study_id = seeded_study(engine, ORTHANC_ID)
    intact = sidecar_view(engine, study_id)

    # Down (nothing listens), then answering errors: the check waits, nothing is dropped.
    down = OrthancClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    for orthanc in (down, mock_orthanc(None, None)):
        watch = DeletionWatch(engine, orthanc, reconcile_every=3600)
        assert watch.notice("Study", ORTHANC_ID) == study_id
        watch.run_due(lambda: False)
        assert watch.status.last_error
        assert watch.status.last_reconcile_at is None
        with Session(engine) as session:
            [check] = session.exec(select(DeletionCheck)).all()
            assert check.attempts == 1 and check.last_error
        assert {**sidecar_view(engine, study_id), "queued": 0} == {**intact, "queued": 0}

    with Session(engine) as session:
        session.delete(session.exec(select(DeletionCheck)).one())
        session.commit()

    # An Orthanc whose change log is behind where the sidecar read it to (its index reset or
    # replaced, another storage): the reconciliation holds, whatever it lists.
    with Session(engine) as session:
        session.add(ChangesCursor(id=1, last_seq=50))
        session.commit()
    for listed in ([], ["ffffffff-4e5f6071-8293a4b5-c6d7e8f9-01234567"]):
        reset = DeletionWatch(engine, mock_orthanc(listed, [], last_change=3), reconcile_every=1)
        reset.run_due(lambda: False)
        assert reset.status.held and "change log ends at 3, before 50" in reset.status.held
        assert sidecar_view(engine, study_id) == intact

    # Orthanc lists other studies but not this one, and holds nothing under its UID: gone.
    other = "ffffffff-4e5f6071-8293a4b5-c6d7e8f9-01234567"
    gone = DeletionWatch(engine, mock_orthanc([other], [], last_change=50), reconcile_every=3600)
    gone.run_due(lambda: False)
    assert gone.status.held is None and gone.status.studies_followed == 1
    view = sidecar_view(engine, study_id)
    assert view["removed_at"] is not None and view["images"] == {} and view["queued"] == 0
    with Session(engine) as session:
        assert session.exec(select(Study).where(col(Study.removed_at).is_(None))).all() == []


def test_a_study_with_a_critical_finding_or_an_order_is_kept_as_a_record(engine: Engine) -> None:
    with_finding = seeded_study(engine, ORTHANC_ID, uid="1.2.826.0.1.3680043.8.498.81")
    with_order = seeded_study(
        engine, "ffffffff-4e5f6071-8293a4b5-c6d7e8f9-0123456a", uid="1.2.826.0.1.3680043.8.498.82"
    )
    with Session(engine) as session:
        user = User(username="reader.kept", password_hash="x", role=Role.RADIOLOGIST)
        order = ImagingOrder(
            accession_number="DEL-KEPT-1",
            study_instance_uid="1.2.826.0.1.3680043.8.498.82",
            patient_id="DEL-KEPT",
            modality=Modality.CT,
        )
        session.add_all([user, order])
        session.flush()
        assert user.id is not None and order.id is not None
        session.add(
            CriticalFinding(
                study_id=with_finding,
                raised_by_id=user.id,
                severity=Severity.CRITICAL,
                description="Tension pneumothorax.",
            )
        )
        study = session.get(Study, with_order)
        assert study is not None
        study.order_id = order.id
        session.add(study)
        session.commit()

    # Orthanc holds neither any more (it lists another study, nothing under their UIDs).
    watch = DeletionWatch(
        engine,
        mock_orthanc(["eeeeeeee-4e5f6071-8293a4b5-c6d7e8f9-01234567"], []),
        reconcile_every=1,
    )
    watch.run_due(lambda: False)

    for study_id, reason in ((with_finding, "critical_finding"), (with_order, "order")):
        view = sidecar_view(engine, study_id)
        assert view["images_deleted_at"] is not None and view["removed_at"] is None
        assert view["images"] == {} and view["counts"] == (0, 0)
        [event] = [
            e
            for e in audit_events(engine, "study.images_deleted_in_orthanc")
            if e.entity_id == str(study_id)
        ]
        assert event.detail["kept_for"] == [reason] and event.detail["removed"] is False
    with Session(engine) as session:
        shown = StudyPublic.model_validate(session.get(Study, with_order))
    assert shown.images_deleted is True and shown.images_deleted_at is not None


def test_the_plugin_route_checks_its_input_and_only_queues(
    engine: Engine, client: TestClient
) -> None:
    study_id = seeded_study(engine, ORTHANC_ID)
    intact = sidecar_view(engine, study_id)
    plugin = {"Authorization": f"Bearer {TEST_PLUGIN_TOKEN}"}
    url = "/api/orthanc/deletions"

    for body, field in (
        ({"resourceType": "Patient", "orthancId": ORTHANC_ID}, "resourceType"),
        ({"resourceType": "Study", "orthancId": "../../studies"}, "orthancId"),
        ({"resourceType": "Study"}, "orthancId"),
    ):
        refused = client.post(url, json=body, headers=plugin)
        assert refused.status_code == 422, refused.text
        assert field in refused.text

    unknown = "eeeeeeee-4e5f6071-8293a4b5-c6d7e8f9-01234567"
    answer = client.post(url, json={"resourceType": "Series", "orthancId": unknown}, headers=plugin)
    assert (answer.status_code, answer.json()["studyId"], answer.json()["queued"]) == (
        202,
        None,
        False,
    )
    answer = client.post(
        url, json={"resourceType": "Study", "orthancId": ORTHANC_ID}, headers=plugin
    )
    assert answer.status_code == 202
    assert answer.json() == {
        "orthancId": ORTHANC_ID,
        "resourceType": "Study",
        "studyId": study_id,
        "queued": True,
    }
    # Queued, durably; nothing is dropped on a notice alone.
    assert sidecar_view(engine, study_id) == {**intact, "queued": 1}


def test_the_plugin_route_takes_a_batch_in_one_transaction_and_checks_every_item(
    engine: Engine, client: TestClient
) -> None:
    first = seeded_study(engine, ORTHANC_ID)
    other_id = "ffffffff-4e5f6071-8293a4b5-c6d7e8f9-01234567"
    second = seeded_study(engine, other_id, uid="1.2.826.0.1.3680043.8.498.78")
    intact = sidecar_view(engine, first)
    plugin = {"Authorization": f"Bearer {TEST_PLUGIN_TOKEN}"}
    url = "/api/orthanc/deletions"
    unknown = "eeeeeeee-4e5f6071-8293a4b5-c6d7e8f9-01234567"
    item = {"resourceType": "Study", "orthancId": unknown}

    for body, field in (
        ({"deletions": [item, {"resourceType": "Patient", "orthancId": unknown}]}, "resourceType"),
        ({"deletions": [item, {"resourceType": "Study", "orthancId": "../x"}]}, "orthancId"),
        ({"deletions": [{"resourceType": "Study"}]}, "orthancId"),
        ({"deletions": "Study"}, "deletions"),
        ({"deletions": []}, "deletions"),
        ({"deletions": [item] * 501}, "deletions"),  # the bound: the plugin sends 500 at most
        ({"deletions": [item], "resourceType": "Study"}, "resourceType"),  # not both shapes
    ):
        refused = client.post(url, json=body, headers=plugin)
        assert refused.status_code == 422, (body, refused.text)
        details = refused.json()["error"]["details"]
        assert any(field in d["location"] for d in details), refused.text
    # Nothing of a refused batch was queued, not even its valid items.
    assert sidecar_view(engine, first) == intact

    batch = [
        {"resourceType": "Instance", "orthancId": unknown},
        {"resourceType": "Study", "orthancId": ORTHANC_ID},
        {"resourceType": "Study", "orthancId": other_id},
        {"resourceType": "Study", "orthancId": ORTHANC_ID},  # twice: one check
    ]
    answer = client.post(url, json={"deletions": batch}, headers=plugin)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"received": 4, "matched": 3, "studiesQueued": 2}
    with Session(engine) as session:
        checks = session.exec(select(DeletionCheck)).all()
    assert sorted((c.study_id, c.cause) for c in checks) == [(first, "plugin"), (second, "plugin")]
    # Queued, durably; nothing is dropped on a notice alone.
    assert sidecar_view(engine, first) == {**intact, "queued": 2}


def test_a_study_removed_with_its_images_takes_no_new_report_finding_or_reading(
    app: FastAPI, client: TestClient, radiologist: dict[str, str]
) -> None:
    """Removed (its images deleted in Orthanc, nothing referred to it): gone for new work too,
    as for every read of it (404), not only from the lists."""
    engine = engine_of(app)
    study_id = seeded_study(engine, ORTHANC_ID)
    other = seeded_study(engine, ORTHANC_ID[:-1] + "8", uid="1.2.826.0.1.3680043.8.498.78")
    with Session(engine) as session:
        for study in session.exec(select(Study)).all():
            study.status = StudyStatus.COMPLETED  # images arrived: ready for reading
            if study.id == other:
                study.images_deleted_at = study.removed_at = study.created_at
            session.add(study)
        session.commit()
    listed = client.post("/api/reports", json={"studyId": study_id}, headers=radiologist)
    assert listed.status_code == 201, listed.text  # a study still listed takes a report
    finding = {"studyId": other, "severity": "CRITICAL", "description": "tension pneumothorax"}
    for method, path, body in (
        ("POST", "/api/reports", {"studyId": other}),
        ("POST", "/api/critical-findings", finding),
        ("POST", f"/api/studies/{other}/claim", None),
        ("GET", f"/api/studies/{other}", None),
    ):
        answer = client.request(method, path, json=body, headers=radiologist)
        assert answer.status_code == 404, (path, answer.text)
    with Session(engine) as session:
        assert session.exec(select(CriticalFinding)).all() == []


class _RewriteMidCheck(OrthancClient):
    """Moves one instance to another patient's Orthanc study (as a patient-merge rewrite does:
    copy stored, original deleted) right after the deletion check has listed the studies of
    its UID, so the check reads the old study without it and the new one not at all."""

    instance_to_move: str | None = None

    def studies_with_uid(self, study_instance_uid: str) -> dict[str, str]:
        found = super().studies_with_uid(study_instance_uid)
        if self.instance_to_move is not None:
            moving, self.instance_to_move = self.instance_to_move, None
            # What the rewrite does first, so that Orthanc's ingress filter lets the copy in.
            self.mark_study(
                self.parent_study_of_instance(moving), REASSIGNMENT_METADATA, "DEL-MOVED-2"
            )
            store = self.store_instance(
                self.modified_instance(moving, {"PatientID": "DEL-MOVED-2"}, [])
            )
            assert store[0] != moving
            self.delete_instance(moving)
        return found


def test_an_instance_moved_while_the_check_reads_orthanc_is_not_dropped(
    engine: Engine, plain_orthanc: OrthancProcess, tmp_path: Path
) -> None:
    client = _RewriteMidCheck(plain_orthanc.url, timeout=30)
    generated = make_study(
        tmp_path / "dicom", series_count=1, instances_per_series=2, patient_id="DEL-MOVED-1"
    )
    for path in generated.files:
        httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    uid = generated.study_instance_uid
    study_id = register(engine, client, uid)
    before = sidecar_view(engine, study_id)
    moving = sorted(before["images"].values())[0]
    watch = DeletionWatch(engine, client, reconcile_every=3600)
    assert watch.notice("Instance", moving) == study_id
    client.instance_to_move = moving
    watch.run_due(lambda: False)
    # Orthanc holds both instances (one under a new id): no image is dropped, the check waits.
    assert len(orthanc_instances(client, uid)) == 2
    view = sidecar_view(engine, study_id)
    assert set(view["images"]) == set(before["images"]) and view["counts"] == (1, 2)
    assert view["queued"] == 1
    assert audit_events(engine, "study.images_deleted_in_orthanc") == []
    # Checked again, every image follows its new id.
    with Session(engine) as session:
        session.execute(
            update(DeletionCheck).values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
        session.commit()
    watch.run_due(lambda: False)
    view = sidecar_view(engine, study_id)
    assert view["images"] == orthanc_instances(client, uid) and view["queued"] == 0
    client.close()


def test_a_study_is_never_re_pointed_to_another_patients_orthanc_study(
    engine: Engine, orthanc: OrthancClient, plain_orthanc: OrthancProcess, tmp_path: Path
) -> None:
    """Orthanc holds the UID under another patient id too (a conflict the registration flags,
    not merged): once the study's own Orthanc study is deleted, the study is not re-pointed to
    the other patient's images."""
    ours = make_study(
        tmp_path / "ours", series_count=1, instances_per_series=2, patient_id="DEL-CONFLICT-1"
    )
    uid = ours.study_instance_uid
    theirs = make_study(
        tmp_path / "theirs",
        series_count=1,
        instances_per_series=1,
        patient_id="DEL-CONFLICT-2",
        study_instance_uid=uid,
    )
    for path in ours.files:
        httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    study_id = register(engine, orthanc, uid)
    own_orthanc_id = str(sidecar_view(engine, study_id)["orthanc_id"])
    # Let Orthanc's ingress filter take the same UID under another patient id.
    orthanc.mark_study(own_orthanc_id, REASSIGNMENT_METADATA, "DEL-CONFLICT-2")
    for path in theirs.files:
        httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    [their_orthanc_id] = [i for i in orthanc.studies_with_uid(uid) if i != own_orthanc_id]

    httpx.delete(f"{plain_orthanc.url}/studies/{own_orthanc_id}").raise_for_status()
    watch = DeletionWatch(engine, orthanc, reconcile_every=3600)
    assert watch.notice("Study", own_orthanc_id) == study_id
    watch.run_due(lambda: False)
    view = sidecar_view(engine, study_id)
    assert view["orthanc_id"] != their_orthanc_id
    assert view["images"] == {} and view["counts"] == (0, 0)
    httpx.delete(f"{plain_orthanc.url}/studies/{their_orthanc_id}").raise_for_status()
