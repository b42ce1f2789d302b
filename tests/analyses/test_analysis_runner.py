"""The runner against a real Orthanc (the run's shared one): a study stored and registered as the
sync registers a stable study (which asks for the auto analyzers in the same transaction), its
images read from Orthanc, the findings written as a Structured Report stored in the study and
read back with pydicom, the task completed only then; failures tried again then failed with the
reason; a task whose node died taken again once its hold lapses.

The runner's thread is never started (the test app syncs nothing by itself): the test runs its
rounds, moving the app's clock by hand."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlmodel import Session, col, select

from sidecar.analyses.analyzers import AnalyzerRegistry
from sidecar.analyses.findings import Box, Severity, StudyContext
from sidecar.analyses.models import Analysis, AnalysisStatus, AnalysisTask
from sidecar.analyses.runner import HOLD, AnalysisRunner
from sidecar.analyses.structured_report import read_report
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.ingest.sync import OrthancSync, RoundReport
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.studies.models import Study

from analysis_helpers import FixedAnalyzer, register, request
from builders import audit_events
from dicom_factory import GeneratedStudy, make_study
from finding_helpers import FakeClock
from onnx_graphs import DETECTOR_MANIFEST, detector, install
from stack import wait_for
from testapp import app_settings, engine_of, service_of

pytestmark = pytest.mark.orthanc

Headers = dict[str, str]
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def settings(database_url: str, tmp_path: Path, orthanc: OrthancProcess) -> Settings:
    """The module's Orthanc; an operator's model for CT chests ("finder", a detector of two
    fixed boxes, one scored by the image's brightness and the other by its darkness)."""
    models = tmp_path / "models"
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    install(models, detector(boxes), DETECTOR_MANIFEST, modalities=["CT"])
    return app_settings(
        database_url,
        tmp_path,
        orthanc_url=orthanc.url,
        orthanc_timeout=30,
        ai_auto_analyzers="test-critical",
        ai_models_dir=models,
    )


@pytest.fixture
def analyzer() -> FixedAnalyzer:
    return FixedAnalyzer(
        findings=[(Severity.CRITICAL, "suspected pneumothorax"), (Severity.LOW, "motion")]
    )


@pytest.fixture
def app(settings: Settings, clock: FakeClock, analyzer: FixedAnalyzer) -> FastAPI:
    app = create_app(settings, clock=clock)
    register(app, analyzer)
    register(app, FixedAnalyzer(name="test-other", findings=[]))
    return app


@pytest.fixture
def runner(app: FastAPI, client: TestClient) -> AnalysisRunner:
    return service_of(app, AnalysisRunner)


@pytest.fixture
def radiologist_headers(radiologist: Headers) -> Headers:
    return radiologist


class Stored:
    def __init__(self, images: GeneratedStudy, orthanc_id: str, study_id: int) -> None:
        self.images, self.orthanc_id, self.study_id = images, orthanc_id, study_id


def store_and_register(
    app: FastAPI, orthanc: OrthancProcess, folder: Path, *, instances: int = 3
) -> Stored:
    """A generated CT study stored in Orthanc, then registered by the sync once Orthanc calls it
    stable (the auto analyzers asked for in the registration)."""
    images = make_study(folder, series_count=1, instances_per_series=instances, modality="CT")
    for path in images.files:
        httpx.post(f"{orthanc.url}/instances", content=path.read_bytes()).raise_for_status()
    [orthanc_id] = OrthancClient(orthanc.url).studies_with_uid(images.study_instance_uid)
    study_id = register_stable(app, orthanc, orthanc_id)
    return Stored(images, orthanc_id, study_id)


def register_stable(app: FastAPI, orthanc: OrthancProcess, orthanc_id: str) -> int:
    wait_for(
        lambda: httpx.get(f"{orthanc.url}/studies/{orthanc_id}").json()["IsStable"],
        timeout=30,
        what="the study stable in Orthanc",
    )
    sync = service_of(app, OrthancSync)
    sync.enqueue([orthanc_id], "plugin")
    report = RoundReport()
    sync.process_pending(report)
    assert orthanc_id in report.registered, report
    with Session(engine_of(app)) as session:
        study_id = session.exec(select(Study.id).where(Study.orthanc_id == orthanc_id)).one()
    assert study_id is not None
    return study_id


def tasks(app: FastAPI) -> list[AnalysisTask]:
    with Session(engine_of(app)) as session:
        return list(session.exec(select(AnalysisTask).order_by(col(AnalysisTask.id))).all())


def files_in_orthanc(orthanc: OrthancProcess, orthanc_id: str) -> Iterator[pydicom.Dataset]:
    for instance in httpx.get(f"{orthanc.url}/studies/{orthanc_id}/instances").json():
        content = httpx.get(f"{orthanc.url}/instances/{instance['ID']}/file").content
        yield pydicom.dcmread(io.BytesIO(content))


def test_a_stable_study_is_analysed_and_its_report_stored_before_it_completes(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    analyzer: FixedAnalyzer,
    radiologist_headers: Headers,
    tmp_path: Path,
) -> None:
    stored = store_and_register(app, orthanc, tmp_path / "study")
    # Asked for in the registration's transaction, by "auto", once.
    with Session(engine_of(app)) as session:
        [analysis] = session.exec(select(Analysis)).all()
    assert (analysis.requested_by, analysis.status) == ("auto", AnalysisStatus.SCHEDULED)
    assert [e.actor for e in audit_events(engine_of(app), "analysis.requested")] == ["auto"]

    assert runner.run_once() == 0.0
    [task] = tasks(app)
    assert task.status == AnalysisStatus.COMPLETED
    assert task.attempts == 1
    # The analyzer was shown every image, one at a time, with what the study was ordered as.
    assert sorted(analyzer.seen[0]) == sorted(
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in stored.images.files
    )
    assert analyzer.contexts[0].study_instance_uid == stored.images.study_instance_uid

    # The report is in the study, in Orthanc, readable with pydicom alone.
    reports = [d for d in files_in_orthanc(orthanc, stored.orthanc_id) if d.Modality == "SR"]
    [report] = reports
    assert report.SOPClassUID == COMPREHENSIVE_SR
    assert report.SOPInstanceUID == task.report_sop_instance_uid
    assert report.StudyInstanceUID == stored.images.study_instance_uid
    read = read_report(report)
    assert read.analyzer_name == "test-critical"
    boxes = {
        f.finding: (f.severity, f.box, f.image.sop_instance_uid if f.image else None)
        for f in read.findings
    }
    first_image = analyzer.seen[0][0]
    assert boxes == {
        "suspected pneumothorax": (Severity.CRITICAL, Box(8.0, 12.0, 20.0, 16.0), first_image),
        "motion": (Severity.LOW, Box(8.0, 12.0, 20.0, 16.0), first_image),
    }
    # The API's findings mirror the report.
    shown = client.get(f"/api/analyses/{analysis.id}", headers=radiologist_headers).json()
    assert shown["status"] == "COMPLETED"
    assert shown["tasks"][0]["reportSopInstanceUID"] == report.SOPInstanceUID
    assert [
        (f["finding"], f["severity"], f["coordinates"]["imageId"], f["coordinates"]["x"])
        for f in shown["findings"]
    ] == [
        ("suspected pneumothorax", "critical", first_image, 8.0),
        ("motion", "low", first_image, 8.0),
    ]
    completed = audit_events(engine_of(app), "analysis.task_completed")
    assert [(e.actor, e.detail["findings"]) for e in completed] == [("system:ai-runner", 2)]
    # The critical finding raised the study for review.
    with Session(engine_of(app)) as session:
        study = session.get(Study, stored.study_id)
        assert study is not None and study.priority == "STAT"

    # The report is a new instance of the study: registered again, no second auto analysis,
    # and a later analysis is shown the images only.
    register_stable(app, orthanc, stored.orthanc_id)
    with Session(engine_of(app)) as session:
        assert len(session.exec(select(Analysis)).all()) == 1
    request(client, radiologist_headers, stored.study_id, "test-critical")
    assert runner.run_once() == 0.0
    assert sorted(analyzer.seen[1]) == sorted(analyzer.seen[0])
    assert runner.run_once() is None  # nothing left


def test_a_failing_analysis_is_tried_again_then_fails_with_the_reason(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    analyzer: FixedAnalyzer,
    clock: FakeClock,
    radiologist_headers: Headers,
    tmp_path: Path,
) -> None:
    analyzer.crash = 3
    stored = store_and_register(app, orthanc, tmp_path / "study", instances=1)
    for attempt in (1, 2):
        assert runner.run_once() == 0.0
        [task] = tasks(app)
        assert (task.status, task.attempts) == (AnalysisStatus.IN_PROGRESS, attempt)
        assert task.held_until is not None and task.held_until > clock()
        waiting = runner.run_once()  # nothing to take until the retry is due
        assert waiting is not None and waiting > 0
        clock.advance(seconds=waiting)
    assert runner.run_once() == 0.0
    [task] = tasks(app)
    assert (task.status, task.attempts) == (AnalysisStatus.FAILED, 3)
    assert task.reason == "failed 3 times, the last: ConnectionError"
    analysis = client.get(f"/api/analyses/{task.analysis_id}", headers=radiologist_headers).json()
    assert analysis["status"] == "FAILED"
    assert analysis["tasks"][0]["reason"] == task.reason
    failed = audit_events(engine_of(app), "analysis.task_failed")
    assert [(e.actor, e.detail["attempts"]) for e in failed] == [("system:ai-runner", 3)]
    # No report was stored for it.
    assert [d.Modality for d in files_in_orthanc(orthanc, stored.orthanc_id)] == ["CT"]

    # An analyzer that says the study cannot be analysed fails it at once.
    analyzer.refuse = "the study holds no chest radiograph"
    request(client, radiologist_headers, stored.study_id, "test-critical")
    assert runner.run_once() == 0.0
    refused = tasks(app)[-1]
    assert (refused.status, refused.attempts) == (AnalysisStatus.FAILED, 1)
    assert refused.reason == "the study holds no chest radiograph"


def test_a_task_whose_node_died_is_taken_again_once_its_hold_lapses(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    analyzer: FixedAnalyzer,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    store_and_register(app, orthanc, tmp_path / "study", instances=1)
    # A node takes the task, then is killed before it finishes.
    assert runner._take(clock()) is not None
    [task] = tasks(app)
    assert task.status == AnalysisStatus.IN_PROGRESS
    clock.advance(minutes=1)
    assert runner.run_once() == pytest.approx((HOLD - timedelta(minutes=1)).total_seconds())
    assert analyzer.seen == []
    clock.advance(seconds=(HOLD - timedelta(minutes=1)).total_seconds())
    assert runner.run_once() == 0.0
    [task] = tasks(app)
    assert (task.status, task.attempts) == (AnalysisStatus.COMPLETED, 2)
    assert len(analyzer.seen) == 1


def test_a_study_gone_from_orthanc_fails_its_analysis(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    tmp_path: Path,
) -> None:
    stored = store_and_register(app, orthanc, tmp_path / "study", instances=1)
    httpx.delete(f"{orthanc.url}/studies/{stored.orthanc_id}").raise_for_status()
    assert runner.run_once() == 0.0
    [task] = tasks(app)
    assert task.status == AnalysisStatus.FAILED
    assert task.reason == "the study's images are no longer in Orthanc"


def test_an_operator_model_runs_as_an_analyzer_and_its_boxes_reach_the_report(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    radiologist_headers: Headers,
    tmp_path: Path,
) -> None:
    stored = store_and_register(app, orthanc, tmp_path / "study", instances=2)
    assert runner.run_once() == 0.0  # the auto analysis first
    accepted = request(client, radiologist_headers, stored.study_id, "finder")
    assert runner.run_once() == 0.0
    shown = client.get(f"/api/analyses/{accepted['analysisId']}", headers=radiologist_headers)
    analysis = shown.json()
    assert analysis["status"] == "COMPLETED", analysis
    # One box per image (a 64 x 64 image: a quarter of it), as the report holds them.
    assert len(analysis["findings"]) == 2
    [report] = [
        d
        for d in files_in_orthanc(orthanc, stored.orthanc_id)
        if d.SOPInstanceUID == analysis["tasks"][0]["reportSopInstanceUID"]
    ]
    read = read_report(report)
    assert read.analyzer_name == "finder"
    from_report = sorted(
        (f.finding, f.image.sop_instance_uid if f.image else "", f.box) for f in read.findings
    )
    from_api = sorted(
        (
            f["finding"],
            f["coordinates"]["imageId"],
            Box(**{k: f["coordinates"][k] for k in ("x", "y", "width", "height")}),
        )
        for f in analysis["findings"]
    )
    assert from_report == from_api
    assert {box.width for _, _, box in from_api} == {32.0}


def test_a_node_whose_task_was_taken_by_another_stores_nothing(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A runner whose hold lapsed while it read the images (hold 0 here: it checks before
    every image) finds the task taken by another node, and leaves it: no report, no result."""
    taken: list[int] = []

    class TakenMidway(FixedAnalyzer):
        def analyze(self, images: Iterable[Dataset], context: StudyContext) -> list[Any]:
            shown = []
            for image in images:
                shown.append(image)
                if not taken:  # another node takes the task after the first image
                    with Session(engine_of(app)) as session:
                        [task] = session.exec(select(AnalysisTask)).all()
                        task.held_until = clock() + HOLD
                        session.add(task)
                        session.commit()
                        taken.append(task.version)
            return super().analyze(shown, context)

    register(app, TakenMidway())
    stored = store_and_register(app, orthanc, tmp_path / "study", instances=2)
    slow = AnalysisRunner(
        engine_of(app),
        OrthancClient(orthanc.url, timeout=30),
        service_of(app, AnalyzerRegistry),
        review_after=timedelta(minutes=15),
        clock=clock,
        hold=timedelta(0),
    )
    assert slow.run_once() == 0.0
    [task] = tasks(app)
    assert (task.status, task.version) == (AnalysisStatus.IN_PROGRESS, taken[0])
    assert task.report_sop_instance_uid is None
    assert [d.Modality for d in files_in_orthanc(orthanc, stored.orthanc_id)] == ["CT", "CT"]
    assert audit_events(engine_of(app), "analysis.task_completed") == []


def test_a_task_whose_node_dies_on_every_attempt_fails_rather_than_looping(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    analyzer: FixedAnalyzer,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A study whose analysis kills its node (out of memory on a huge image, a crash in native
    code) is a poison pill: taken again after each lapsed hold, it would kill a node every HOLD,
    forever. It is tried MAX_ATTEMPTS times, as any failure is, then fails with the reason."""
    store_and_register(app, orthanc, tmp_path / "study", instances=1)
    for attempt in (1, 2, 3):
        assert runner._take(clock()) is not None  # taken, then the node is killed
        [task] = tasks(app)
        assert (task.status, task.attempts) == (AnalysisStatus.IN_PROGRESS, attempt)
        clock.advance(seconds=HOLD.total_seconds())
    assert runner.run_once() is None  # nothing left to take
    [task] = tasks(app)
    assert (task.status, task.attempts) == (AnalysisStatus.FAILED, 3)
    assert task.reason is not None and "3 attempts" in task.reason
    assert analyzer.seen == []
    failed = audit_events(engine_of(app), "analysis.task_failed")
    assert [(e.actor, e.detail["attempts"]) for e in failed] == [("system:ai-runner", 3)]


def test_a_task_left_by_a_stopping_node_is_not_counted_as_an_attempt(
    app: FastAPI,
    client: TestClient,
    orthanc: OrthancProcess,
    runner: AnalysisRunner,
    analyzer: FixedAnalyzer,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A node stopped in good order (a deploy) leaves its task at once: that is no failure of
    the study's, so however many deploys it meets it is not failed for them."""
    store_and_register(app, orthanc, tmp_path / "study", instances=1)
    for _ in range(4):
        held = runner._take(clock())
        assert held is not None
        runner._release(held, given_back=True)
    [task] = tasks(app)
    assert (task.status, task.attempts) == (AnalysisStatus.IN_PROGRESS, 0)
    assert runner.run_once() == 0.0
    [task] = tasks(app)
    assert (task.status, task.attempts) == (AnalysisStatus.COMPLETED, 1)
