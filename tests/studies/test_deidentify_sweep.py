"""De-identified copies abandoned midway (issue 15, review of item 8): the sidecar killed while
Orthanc made a copy, or giving up after the timeout, leaves a copy "creating" and parts of it
in Orthanc. The sweep deletes them once it is abandoned, marks it failed and audits it; Orthanc
down: nothing is marked; a copy still being made is left alone; the sync keeps passing over the
copy's UID afterwards. Against the run's plain Orthanc; both databases.

Several nodes (issue 16): each follows its own Orthanc's jobs only; another node's copy is left
to it while it lives, swept by any node once it is gone; two nodes never both sweep one copy.
Against a fake Orthanc where the jobs' states must be chosen."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from sidecar.core.cluster_models import ClusterNode
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


THIS_NODE = "node-a"
GONE_AFTER = 15.0  # CLUSTER_LEASE_SECONDS
RETRY = 60.0  # the sweep's default


def node_sweep(
    engine: Engine, orthanc: OrthancClient, node: str, clock: FakeClock
) -> DeidentificationSweep:
    return DeidentificationSweep(
        engine, orthanc, node_name=node, node_gone_after=GONE_AFTER, clock=clock
    )


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
    settings = app_settings(database_url, tmp_path)
    app = create_app(settings, orthanc=orthanc, clock=clock)
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
        down = node_sweep(
            engine, OrthancClient(f"http://127.0.0.1:{free_port()}"), settings.node_name, clock
        )
        assert down.run_once() == 60.0
        assert down.last_error is not None
        with Session(engine) as session:
            assert session.get(DeidentifiedCopy, stale_id).status is CopyStatus.CREATING  # type: ignore[union-attr]
        assert len(held_under(orthanc, stale_uid)) == 1
        assert audit_events(engine, "study.deidentification_abandoned") == []

        # Orthanc back: the abandoned copy is deleted and failed; the fresh one is left alone,
        # and the next round is planned for when it would be abandoned.
        sweep = node_sweep(engine, orthanc, settings.node_name, clock)
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
            assert copy.orthanc_node == settings.node_name  # the node that can follow the job
            assert copy.failure_reason == "Orthanc did not finish the copy in time"
            uid, copy_id = copy.study_instance_uid, copy.id
        assert len(held_under(orthanc, uid)) == 1  # not deleted while Orthanc may write
        (failed,) = audit_events(engine, "study.deidentify_failed")
        assert failed.detail["copy_id"] == copy_id

        sweep = node_sweep(engine, orthanc, settings.node_name, clock)
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
        assert node_sweep(engine, orthanc, settings.node_name, clock).run_once() is None
        assert orthanc.studies_with_uid(uid) == {}
        with Session(engine) as session:
            swept = session.get(DeidentifiedCopy, copy_id)
            assert swept is not None and swept.status is CopyStatus.FAILED
        orthanc.delete_study(source_id)


# -- several nodes on one database (issue 16) ---------------------------------------------------


def heartbeat(engine: Engine, name: str, *, ago: float = 0.0, stopped: bool = False) -> None:
    """`name`'s row in cluster_node, as its heartbeat leaves it: written `ago` seconds before
    now, and the node stopped or not."""
    now = utcnow()
    with Session(engine) as session:
        node = session.get(ClusterNode, name) or ClusterNode(
            name=name,
            instance=uuid.uuid4().hex[:16],
            started_at=now - timedelta(hours=1),
            last_heartbeat_at=now,
            secret_fingerprint="0" * 16,
        )
        node.last_heartbeat_at = now - timedelta(seconds=ago)
        node.stopped_at = now if stopped else None
        session.add(node)
        session.commit()


def status_of(engine: Engine, copy_id: int | None) -> CopyStatus:
    with Session(engine) as session:
        copy = session.get(DeidentifiedCopy, copy_id)
        assert copy is not None
        return copy.status


def swept_copies(engine: Engine) -> list[int]:
    return [e.detail["copy_id"] for e in audit_events(engine, "study.deidentification_abandoned")]


class FakeOrthanc:
    """One node's Orthanc, as the sweep sees it: its own jobs (unknown ids: 404), asked to stop
    (a running job then fails, as Orthanc's do), and the studies held under each UID."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}  # job id -> State
        self.held: dict[str, list[str]] = {}  # StudyInstanceUID -> Orthanc study ids
        self.requests: list[str] = []
        self.on_job: list[str] = []  # job ids whose query runs `before_answer` first
        self.before_answer: Callable[[], object] = lambda: None

    def client(self) -> OrthancClient:
        return OrthancClient("http://orthanc.test", transport=httpx.MockTransport(self.answer))

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        parts = path.strip("/").split("/")
        if parts[0] == "jobs":
            job_id = parts[1]
            if job_id in self.on_job:
                self.on_job.remove(job_id)
                self.before_answer()
            if job_id not in self.jobs:
                return httpx.Response(404, json={"Message": "Unknown resource"})
            if request.method == "POST" and parts[2:] == ["cancel"]:
                if self.jobs[job_id] in {"Pending", "Running", "Paused", "Retry"}:
                    self.jobs[job_id] = "Failure"
                return httpx.Response(200, json={})
            return httpx.Response(200, json={"ID": job_id, "State": self.jobs[job_id]})
        if path == "/tools/lookup":
            uid = request.content.decode()
            found = [{"Type": "Study", "ID": study} for study in self.held.get(uid, [])]
            return httpx.Response(200, content=json.dumps(found))
        if parts[0] == "studies" and request.method == "GET":
            return httpx.Response(200, json={"ID": parts[1], "PatientMainDicomTags": {}})
        if parts[0] == "studies" and request.method == "DELETE":
            for studies in self.held.values():
                if parts[1] in studies:
                    studies.remove(parts[1])
            return httpx.Response(200, json={})
        return httpx.Response(404, json={})


def test_another_nodes_copy_is_left_to_it_while_it_lives_and_swept_once_it_is_gone(
    engine: Engine, tmp_path: Path, plain_orthanc: OrthancProcess
) -> None:
    """This node's Orthanc does not know another node's job (it answers as for a job over):
    the copy of a live node is left alone; a stopped node's, or one whose heartbeat is stale,
    is swept through this node's Orthanc (the index is shared), once."""
    orthanc = OrthancClient(plain_orthanc.url, timeout=30)
    images = make_study(tmp_path / "source", series_count=1, instances_per_series=2)
    source_id = ""
    for path in images.files:
        stored = httpx.post(f"{plain_orthanc.url}/instances", content=path.read_bytes())
        stored.raise_for_status()
        source_id = stored.json()["ParentStudy"]
    clock = FakeClock(utcnow())
    heartbeat(engine, THIS_NODE)
    heartbeat(engine, "node-b")
    heartbeat(engine, "node-c", stopped=True)
    with Session(engine) as session:
        copies = {}
        for study_id, node in ((61, "node-b"), (62, "node-c")):
            copy = record_copy(
                session,
                study_id,
                "teaching",
                "admin",
                clock() - ABANDONED_AFTER,
                orthanc_node=node,
            )
            copy_in_orthanc(orthanc, source_id, copy)  # what its node's Orthanc wrote
            copy.orthanc_job_id = str(uuid.uuid4())  # a job of its node's Orthanc
            assert orthanc.job(copy.orthanc_job_id) is None  # unknown to this node's
            session.add(copy)
            session.commit()
            copies[node] = (copy.id, copy.study_instance_uid)
    (live_id, live_uid), (stopped_id, stopped_uid) = copies["node-b"], copies["node-c"]

    sweep = node_sweep(engine, orthanc, THIS_NODE, clock)
    assert sweep.run_once() == RETRY  # node-b's copy: looked at again later
    assert len(held_under(orthanc, live_uid)) == 1
    assert status_of(engine, live_id) is CopyStatus.CREATING
    assert held_under(orthanc, stopped_uid) == {}
    assert status_of(engine, stopped_id) is CopyStatus.FAILED
    assert swept_copies(engine) == [stopped_id]

    # node-b stops answering: its heartbeat goes stale, and its copy is swept here.
    heartbeat(engine, "node-b", ago=2 * GONE_AFTER)
    assert sweep.run_once() is None
    assert held_under(orthanc, live_uid) == {}
    assert status_of(engine, live_id) is CopyStatus.FAILED
    assert swept_copies(engine) == [stopped_id, live_id]
    (_, event) = audit_events(engine, "study.deidentification_abandoned")
    assert (event.entity_id, event.detail["orthanc_studies_deleted"]) == ("61", 1)
    orthanc.delete_study(source_id)


def test_this_nodes_copy_is_followed_through_its_own_orthanc_as_before(engine: Engine) -> None:
    """This node's copy is never taken for a gone node's, even when its own heartbeat is
    stale (the database was slow): its running job is asked to stop, and what it wrote is
    deleted once the job is over."""
    orthanc = FakeOrthanc()
    orthanc.jobs["job-a"] = "Running"
    clock = FakeClock(utcnow())
    heartbeat(engine, THIS_NODE, ago=2 * GONE_AFTER)
    with Session(engine) as session:
        copy = record_copy(
            session, 71, "teaching", "admin", clock() - ABANDONED_AFTER, orthanc_node=THIS_NODE
        )
        copy.orthanc_job_id = "job-a"
        session.add(copy)
        session.commit()
        copy_id = copy.id
        orthanc.held[copy.study_instance_uid] = ["copy-a"]

    sweep = node_sweep(engine, orthanc.client(), THIS_NODE, clock)
    assert sweep.run_once() == RETRY
    assert "POST /jobs/job-a/cancel" in orthanc.requests
    assert "DELETE /studies/copy-a" not in orthanc.requests  # not while Orthanc may write
    assert status_of(engine, copy_id) is CopyStatus.CREATING
    assert swept_copies(engine) == []

    assert orthanc.jobs["job-a"] == "Failure"  # stopped
    assert sweep.run_once() is None
    assert "DELETE /studies/copy-a" in orthanc.requests
    assert status_of(engine, copy_id) is CopyStatus.FAILED
    assert swept_copies(engine) == [copy_id]


def test_a_copy_another_node_swept_meanwhile_is_not_swept_again(engine: Engine) -> None:
    """A copy recorded before clusters names no node: every node takes it for its own, and
    neither's Orthanc knows its job. node-b sweeps it between node-a's listing and node-a's
    acting: node-a reads it again before acting, and neither deletes nor audits it again."""
    clock = FakeClock(utcnow())
    with Session(engine) as session:
        copy = record_copy(session, 81, "research", "admin", clock() - ABANDONED_AFTER)
        assert copy.orthanc_node is None
        copy.orthanc_job_id = "job-before-clusters"
        session.add(copy)
        session.commit()
        copy_id, uid = copy.id, copy.study_instance_uid
    orthanc_a, orthanc_b = FakeOrthanc(), FakeOrthanc()
    orthanc_a.held[uid] = orthanc_b.held[uid] = ["shared"]  # one index, both see it
    sweep_b = node_sweep(engine, orthanc_b.client(), "node-b", clock)
    orthanc_a.on_job.append("job-before-clusters")
    orthanc_a.before_answer = sweep_b.run_once

    assert node_sweep(engine, orthanc_a.client(), THIS_NODE, clock).run_once() is None
    assert orthanc_a.requests == ["GET /jobs/job-before-clusters"]
    assert "DELETE /studies/shared" in orthanc_b.requests
    assert status_of(engine, copy_id) is CopyStatus.FAILED
    assert swept_copies(engine) == [copy_id]


def test_a_copy_another_node_is_sweeping_now_is_passed_over(engine: Engine) -> None:
    """Two nodes sweeping a gone node's copy at once: the second finds the row locked, passes
    over it and looks again on a later round (SQLite: one node, no row locks)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks between nodes: PostgreSQL only")
    clock = FakeClock(utcnow())
    heartbeat(engine, "node-b", ago=2 * GONE_AFTER)
    with Session(engine) as session:
        copy = record_copy(
            session, 91, "teaching", "admin", clock() - ABANDONED_AFTER, orthanc_node="node-b"
        )
        copy_id, uid = copy.id, copy.study_instance_uid
    orthanc = FakeOrthanc()
    orthanc.held[uid] = ["copy-b"]
    sweep = node_sweep(engine, orthanc.client(), THIS_NODE, clock)
    with engine.connect() as other_node:  # sweeping it: its row locked until it commits
        other_node.execute(
            text("SELECT id FROM deidentified_copy WHERE id = :id FOR UPDATE"), {"id": copy_id}
        )
        assert sweep.run_once() == RETRY
        assert orthanc.requests == []
        assert swept_copies(engine) == []
        other_node.rollback()  # it stopped answering Orthanc: the copy stays for a later round
    assert sweep.run_once() is None
    assert orthanc.held[uid] == []
    assert status_of(engine, copy_id) is CopyStatus.FAILED
    assert swept_copies(engine) == [copy_id]
