"""An external analyzer (tests/support/ups_performer.py: httpx and pydicom, nothing of the
sidecar) performs work items end to end through the nginx front of a node as `make run` starts
it (Orthanc with the plugin, the sidecar, nginx running viewer/nginx.conf): it finds the work
item, claims it, reads the study over WADO-RS, stores a report it wrote with highdicom over
STOW-RS, names it in the work item and completes it; the analysis is then COMPLETED with the
report's findings. Around it: a second claim, a wrong transaction UID, another study, hostile
paths, and last a kill -9 of the node mid-claim, after which the claim is whole.

One node for the module (slow to start on two cores); the kill comes last."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from sqlalchemy import Engine, create_engine
from sqlmodel import Session, select

from sidecar.analyses.models import Analysis, AnalysisFinding, AnalysisTask, Workitem
from sidecar.findings.models import CriticalFinding
from sidecar.orders.models import Priority
from sidecar.reading.models import StudyReading
from sidecar.studies.models import Study

from analyzer_report import ALGORITHM, BoxedFinding, nodule_report
from cluster_nodes import ClusterNode, one_node
from dicom_factory import GeneratedStudy, make_study
from stack import wait_for
from ups_performer import UpsPerformer, output_information, served
from workitem_rows import ScheduledItem, schedule

pytestmark = pytest.mark.orthanc

ANALYZER_PASSWORD = "analyzer-password-e2e-1"
BOX = BoxedFinding(x=10, y=12, width=20, height=16, certainty=0.83)
REVIEW_MINUTES = 7  # not the default 15: the node's AI_REVIEW_MINUTES is what counts


@dataclass
class World:
    node: ClusterNode
    engine: Engine
    held: GeneratedStudy  # the study the work items name
    other: GeneratedStudy  # a study no work item names
    tokens: dict[str, str]

    def performer(self, name: str, base: str | None = None) -> UpsPerformer:
        return UpsPerformer(base or self.node.front, self.tokens[name])

    def schedule(self) -> ScheduledItem:
        return schedule(self.engine, self.held.study_instance_uid)


def _upload(node: ClusterNode, study: GeneratedStudy) -> None:
    for path in study.files:
        stored = httpx.post(f"{node.orthanc_url}/instances", content=path.read_bytes(), timeout=30)
        assert stored.status_code == 200, stored.text


def _registered(node: ClusterNode, *studies: GeneratedStudy) -> bool:
    counts = {found["studyInstanceUID"]: found["instanceCount"] for found in node.studies()}
    return all(counts.get(s.study_instance_uid) == len(s.files) for s in studies)


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[World]:
    work = tmp_path_factory.mktemp("workitems-studies")
    with one_node(
        request,
        tmp_path_factory,
        database_template,
        label="workitems-node",
        AI_EXTERNAL_ANALYZERS="ext-detector",
        AI_REVIEW_MINUTES=str(REVIEW_MINUTES),
    ) as node:
        engine = create_engine(node.env["DATABASE_URL"])
        try:
            held = make_study(work / "held", series_count=1, instances_per_series=2)
            other = make_study(work / "other", series_count=1, instances_per_series=1)
            for study in (held, other):
                _upload(node, study)
            wait_for(lambda: _registered(node, held, other), timeout=60, what="the studies")
            tokens = {}
            for name in ("ai-one", "ai-two"):
                # Created by an administrator as any account is.
                made = node.api(
                    "POST",
                    "/api/users",
                    json={"username": name, "password": ANALYZER_PASSWORD, "role": "analyzer"},
                )
                assert made.status_code == 201, made.text
                tokens[name] = node.login(name, ANALYZER_PASSWORD)
            yield World(node, engine, held, other, tokens)
        finally:
            engine.dispose()


def _images(performer: UpsPerformer, retrieve_url: str) -> list[pydicom.Dataset]:
    """The study's images (not the reports stored into it meanwhile), over WADO-RS."""
    images = [found for found in performer.read_study(retrieve_url) if "PixelData" in found]
    assert images, "the study's images over WADO-RS"
    return sorted(images, key=lambda image: int(image.InstanceNumber))


def _perform(
    world: World,
    performer: UpsPerformer,
    uid: str,
    txn: str,
    severity: Code = codes.SCT.Severe,
) -> pydicom.Dataset:
    """Reads the study, stores a report of one nodule, names it, completes: the report."""
    item = served(performer.retrieve(uid))
    images = _images(performer, item["retrieve_url"])
    report = nodule_report(images, images[0], BOX, severity)
    stored = performer.store(item["study"], report)
    assert stored.status_code == 200, stored.text
    named = performer.update(uid, txn, output_information(report))
    assert named.status_code == 200, named.text
    done = performer.change_state(uid, "COMPLETED", txn)
    assert done.status_code == 200, done.text
    return report


def _task(world: World, item: ScheduledItem) -> tuple[str, str, str | None]:
    with Session(world.engine) as session:
        analysis = session.get(Analysis, item.analysis_id)
        task = session.get(AnalysisTask, item.task_id)
        assert analysis is not None and task is not None
        return analysis.status.value, task.status.value, task.report_sop_instance_uid


def test_an_external_analyzer_performs_a_work_item_through_nginx(world: World) -> None:
    item = world.schedule()
    performer = world.performer("ai-one")
    # Before it holds the work item, the study is not its to read.
    retrieve_url = f"{world.node.front}/dicom-web/studies/{world.held.study_instance_uid}"
    assert performer.http.get(f"{retrieve_url}/metadata").status_code == 404
    [found] = performer.search(ProcedureStepState="SCHEDULED", ProcedureStepLabel="ext-detector")
    offered = served(found)
    assert offered["uid"] == item.uid
    assert offered["retrieve_url"] == retrieve_url  # the front it came through
    claimed, txn = performer.claim(item.uid)
    assert claimed.status_code == 200, claimed.text
    assert _task(world, item)[:2] == ("IN_PROGRESS", "IN_PROGRESS")
    report = _perform(world, performer, item.uid, txn)

    assert _task(world, item) == ("COMPLETED", "COMPLETED", report.SOPInstanceUID)
    with Session(world.engine) as session:
        [finding] = session.exec(
            select(AnalysisFinding).where(AnalysisFinding.task_id == item.task_id)
        ).all()
    assert (finding.model, finding.finding, finding.severity) == (ALGORITHM, "Nodule", "high")
    assert finding.confidence == pytest.approx(BOX.certainty)
    assert (finding.x, finding.y, finding.width, finding.height) == (10, 12, 20, 16)
    assert finding.sop_instance_uid == world.held.instances[0].sop_instance_uid
    # The report is in the study, as Orthanc holds it.
    lookup = httpx.post(
        f"{world.node.orthanc_url}/tools/lookup", content=str(report.SOPInstanceUID), timeout=10
    ).json()
    assert [entry["Type"] for entry in lookup] == ["Instance"]
    # Completed: the study is no longer the analyzer's to read, nor to store into.
    sidecar = world.performer("ai-one", world.node.url)
    assert sidecar.http.get(f"/dicom-web/studies/{offered['study']}/metadata").status_code == 404
    query = f"{retrieve_url}/series?includefield=all"  # nginx asks the sidecar for each query
    assert performer.http.get(query).status_code == 404
    stored = performer.store(offered["study"], report)
    assert stored.status_code in (403, 409), stored.text
    assert performer.search(SOPInstanceUID=item.uid)[0].ProcedureStepState == "COMPLETED"


def test_a_critical_finding_of_an_external_analyzer_asks_for_review_in_ai_review_minutes(
    world: World,
) -> None:
    item = world.schedule()
    performer = world.performer("ai-two")
    claimed, txn = performer.claim(item.uid)
    assert claimed.status_code == 200, claimed.text
    _perform(world, performer, item.uid, txn, severity=codes.SCT.Fatal)
    with Session(world.engine) as session:
        task = session.get(AnalysisTask, item.task_id)
        study = session.exec(
            select(Study).where(Study.study_instance_uid == world.held.study_instance_uid)
        ).one()
        reading = session.exec(select(StudyReading).where(StudyReading.study_id == study.id)).one()
        raised = session.exec(
            select(CriticalFinding).where(CriticalFinding.study_id == study.id)
        ).all()
    assert task is not None and task.ended_at is not None
    # Raised to STAT and due for review AI_REVIEW_MINUTES after the report was recorded; never a
    # critical finding by itself.
    assert study.priority == Priority.STAT
    assert reading.review_due_at == task.ended_at + timedelta(minutes=REVIEW_MINUTES)
    assert raised == []


def test_a_second_claim_and_a_wrong_transaction_uid_are_refused(world: World) -> None:
    item = world.schedule()
    one, two = world.performer("ai-one"), world.performer("ai-two")
    claimed, txn = one.claim(item.uid)
    assert claimed.status_code == 200, claimed.text
    second, _ = two.claim(item.uid)
    assert second.status_code == 409, second.text
    assert "inconsistent with the state" in second.headers["Warning"]
    wrong = one.change_state(item.uid, "COMPLETED", "2.25.999")
    assert wrong.status_code == 400
    assert "Transaction UID is incorrect" in wrong.headers["Warning"]
    # The other analyzer cannot read the study the first one holds.
    study = world.held.study_instance_uid
    assert two.http.get(f"/dicom-web/studies/{study}/series?limit=5").status_code == 404
    # Nor complete it: it has no report named, and the first one's claim stands.
    refused = one.change_state(item.uid, "COMPLETED", txn)
    assert refused.status_code == 409
    assert "Output Information Sequence" in refused.json()["error"]["message"]
    canceled = one.change_state(item.uid, "CANCELED", txn)
    assert canceled.status_code == 200, canceled.text
    assert _task(world, item)[:2] == ("CANCELED", "CANCELED")


def test_the_analyzer_sees_no_other_study(world: World) -> None:
    item = world.schedule()
    performer = world.performer("ai-one")
    claimed, txn = performer.claim(item.uid)
    assert claimed.status_code == 200
    other = world.other.study_instance_uid
    for base in (world.node.front, world.node.url):
        reader = world.performer("ai-one", base)
        assert reader.http.get(f"/dicom-web/studies/{other}/metadata").status_code == 404
        assert reader.http.get(f"/dicom-web/studies/{other}/series?limit=1").status_code == 404
        # A search that names no study would be answered from the whole archive: refused.
        assert reader.http.get("/dicom-web/studies?PatientID=*").status_code == 403
        # The API, the pages and the viewer are not its.
        assert reader.http.get("/api/studies").status_code == 403
    held = _images(
        performer, f"{world.node.front}/dicom-web/studies/{world.held.study_instance_uid}"
    )
    report = nodule_report(held, held[0], BOX)
    report.StudyInstanceUID = other  # into another study: refused
    refused = performer.store(other, report)
    assert refused.status_code == 403, refused.text
    assert performer.change_state(item.uid, "CANCELED", txn).status_code == 200


# Raw targets (http.client sends them as written); {uid}: a work item, {orthanc}: Orthanc's id
# of the held study, which Orthanc's own REST API would delete or read.
HOSTILE: tuple[tuple[str, str, dict[str, str], int | None], ...] = (
    ("GET", "/dicom-web/workitems/%2e%2e/studies/{orthanc}", {}, 400),
    # Another method on a path no route of it has: any 4xx (nginx 400, the sidecar 405).
    ("PUT", "/dicom-web/workitems/..%2f..%2fstudies/{orthanc}?_method=DELETE", {}, None),
    ("GET", "/dicom-web/workitems/{uid}/../../../studies/{orthanc}", {}, 400),
    ("GET", "/dicom-web/workitems/{uid}/state/..", {}, 400),
    ("GET", "/dicom-web/workitems//{uid}", {}, 400),
    ("GET", "/dicom-web/workitems?_method=DELETE", {}, 400),
    ("GET", "/dicom-web/workitems/{uid}%00", {}, 400),
    ("GET", "/dicom-web/workitems/{uid}/nothing", {}, 404),
    ("GET", "/dicom-web/workitemsx", {}, 404),
    ("GET", "/DICOM-WEB/workitems", {}, 404),
    ("POST", "/dicom-web/workitems/{uid}", {"X-HTTP-Method-Override": "DELETE"}, 400),
    ("GET", "/dicom-web/workitems", {"Host": 'a.test";host=evil'}, 400),
)


def _raw(base: str, method: str, target: str, headers: dict[str, str], token: str) -> int:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        sent = {"Authorization": f"Bearer {token}", "Content-Length": "0", **headers}
        connection.putrequest(method, target, skip_host="Host" in headers)
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_hostile_paths_are_refused_on_both_fronts(world: World) -> None:
    item = world.schedule()
    orthanc = httpx.post(
        f"{world.node.orthanc_url}/tools/lookup", content=world.held.study_instance_uid, timeout=10
    ).json()[0]["ID"]
    answers: dict[tuple[str, str, str], Any] = {}
    for base in (world.node.front, world.node.url):
        for method, target, headers, status in HOSTILE:
            filled = target.format(uid=item.uid, orthanc=orthanc)
            got = _raw(base, method, filled, headers, world.tokens["ai-one"])
            if got != status and not (status is None and 400 <= got < 500):
                answers[(base, method, filled)] = got
    assert answers == {}
    assert httpx.get(f"{world.node.orthanc_url}/studies/{orthanc}", timeout=10).status_code == 200
    with Session(world.engine) as session:
        workitem = session.get(Workitem, item.workitem_id)
        assert workitem is not None and workitem.state.value == "SCHEDULED"


def test_kill_9_mid_claim_loses_nothing(world: World) -> None:
    item = world.schedule()
    performer = world.performer("ai-one")
    claimed, txn = performer.claim(item.uid)
    assert claimed.status_code == 200, claimed.text
    performer.close()
    world.node.kill()
    world.node.restart()
    performer = world.performer("ai-one")  # the same token: the node's secret did not change
    held = performer.retrieve(item.uid)
    assert held.ProcedureStepState == "IN PROGRESS"
    assert _task(world, item)[:2] == ("IN_PROGRESS", "IN_PROGRESS")
    report = _perform(world, performer, item.uid, txn)
    assert _task(world, item) == ("COMPLETED", "COMPLETED", report.SOPInstanceUID)
