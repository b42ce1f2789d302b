"""The analyses API (seed 002 paths): asking for an analysis, reading it with its tasks and
findings, a study's analyses page by page, and a radiologist's review of a finding. Who may do
what, a study out of the caller's reach answering 404, refusals naming the model, and the audit
rows each change leaves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom import Dataset
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.analyses.analyzers import AnalyzerRegistry
from sidecar.analyses.findings import Box, Severity
from sidecar.analyses.models import AnalysisTask, AnalyzerKind, Workitem
from sidecar.analyses.runner import AnalysisRunner
from sidecar.findings.models import CriticalFinding
from sidecar.main import create_app
from sidecar.studies.models import Study

from analysis_helpers import FixedAnalyzer, complete_tasks, finding, register, request
from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from onnx_graphs import CLASSIFIER_MANIFEST, DETECTOR_MANIFEST, classifier, detector, install
from reading_helpers import ready_study
from testapp import USER_PASSWORD, app_settings, engine_of, login, service_of
from workitem_rows import ANALYZER_PASSWORD, analyzer_account

Headers = dict[str, str]
HeadersFor = Callable[[Role], Headers]
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DICOM_JSON = "application/dicom+json"


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    register(app, FixedAnalyzer(name="test-critical"))
    register(app, FixedAnalyzer(name="test-other"))
    return app


@pytest.fixture
def study_id(app: FastAPI, client: TestClient, technologist: Headers) -> int:
    return ready_study(app, client, technologist, now=NOW)


def test_a_radiologist_asks_for_an_analysis_and_reads_it(
    app: FastAPI, client: TestClient, radiologist: Headers, study_id: int
) -> None:
    accepted = request(
        client,
        radiologist,
        study_id,
        "test-critical",
        "test-other",
        "test-critical",
        priority="high",
    )
    assert accepted == {
        "analysisId": accepted["analysisId"],
        "studyId": study_id,
        "status": "SCHEDULED",
    }
    answer = client.get(f"/api/analyses/{accepted['analysisId']}", headers=radiologist)
    assert answer.status_code == 200, answer.text
    analysis = answer.json()
    assert analysis["status"] == "SCHEDULED"
    assert analysis["priority"] == "high"
    assert analysis["requestedBy"] == "radiologist-user"
    assert analysis["completedAt"] is None
    # Each analyzer once, in the order asked.
    assert analysis["tasks"] == [
        {"analyzer": name, "status": "SCHEDULED", "reason": None, "reportSopInstanceUID": None}
        for name in ("test-critical", "test-other")
    ]
    assert analysis["findings"] == []
    requested = audit_events(engine_of(app), "analysis.requested")
    assert [(e.actor, e.entity_id) for e in requested] == [
        ("radiologist-user", str(accepted["analysisId"]))
    ]
    assert requested[0].detail == {
        "study_id": study_id,
        "analyzers": ["test-critical", "test-other"],
        "priority": "HIGH",
    }
    with Session(engine_of(app)) as session:
        kinds = session.exec(select(AnalysisTask.kind)).all()
    assert kinds == [AnalyzerKind.BUILT_IN, AnalyzerKind.BUILT_IN]


@pytest.mark.parametrize(
    ("given", "stored"), [("LOW", "low"), ("Medium", "medium"), (None, "medium")]
)
def test_the_priority_is_taken_in_any_case_and_defaults_to_medium(
    client: TestClient, admin_headers: Headers, study_id: int, given: str | None, stored: str
) -> None:
    extra = {} if given is None else {"priority": given}
    accepted = request(client, admin_headers, study_id, "test-critical", **extra)
    analysis = client.get(f"/api/analyses/{accepted['analysisId']}", headers=admin_headers).json()
    assert analysis["priority"] == stored


@pytest.mark.parametrize(
    ("body", "location", "named"),
    [
        ({"models": ["no-such-model"]}, "body.models", "no-such-model"),
        ({"models": ["test-critical", "no-such-model"]}, "body.models", "no-such-model"),
        ({"models": ["broken-model"]}, "body.models", "sha256 does not match"),
        ({"models": []}, "body.models", ""),
        ({"models": ["test-critical"], "priority": "urgent"}, "body.priority", ""),
    ],
)
def test_unknown_refused_or_missing_models_are_refused_naming_them(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    study_id: int,
    body: dict[str, object],
    location: str,
    named: str,
) -> None:
    service_of(app, AnalyzerRegistry).refuse("broken-model", "its sha256 does not match")
    answer = client.post(f"/api/v1/imaging/analyze/{study_id}", json=body, headers=radiologist)
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["location"] == location
    assert named in detail["message"]
    assert client.get(f"/api/studies/{study_id}/analyses", headers=radiologist).json()["total"] == 0
    assert audit_events(engine_of(app), "analysis.requested") == []


def test_a_study_without_stored_images_is_refused(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers
) -> None:
    created = client.post("/api/studies", json={"patientId": "P-EMPTY"}, headers=technologist)
    assert created.status_code == 201, created.text
    answer = client.post(
        f"/api/v1/imaging/analyze/{created.json()['id']}",
        json={"models": ["test-critical"]},
        headers=radiologist,
    )
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["location"] == "path.studyId"
    assert "no stored images yet" in detail["message"]
    missing = client.post(
        "/api/v1/imaging/analyze/999999", json={"models": ["test-critical"]}, headers=radiologist
    )
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "role", [Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION, Role.ANALYZER]
)
def test_only_radiologists_and_administrators_reach_analyses(
    client: TestClient,
    headers_for: HeadersFor,
    radiologist: Headers,
    study_id: int,
    role: Role,
) -> None:
    accepted = request(client, radiologist, study_id, "test-critical")
    headers = headers_for(role)
    for method, path, body in (
        ("POST", f"/api/v1/imaging/analyze/{study_id}", {"models": ["test-critical"]}),
        ("GET", f"/api/analyses/{accepted['analysisId']}", None),
        ("GET", f"/api/studies/{study_id}/analyses", None),
        (
            "POST",
            f"/api/analyses/{accepted['analysisId']}/findings/1/review",
            {"decision": "accepted"},
        ),
    ):
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 403, (method, path, answer.text)
        assert client.request(method, path, json=body).status_code == 401


def test_a_study_of_another_facility_answers_404_everywhere(
    app: FastAPI, client: TestClient, admin_headers: Headers, radiologist: Headers
) -> None:
    south = orthanc_study(f"{UID_ROOT}.77.1", accession_number="AI-S1", patient_id="P-SOUTH")
    study_id = seed_study(engine_of(app), south)
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.facility_id = "SOUTH"
        session.add(study)
        session.add(
            User(
                username="dr.north",
                password_hash=hash_password(USER_PASSWORD),
                role=Role.RADIOLOGIST,
                facilities=["NORTH"],
            )
        )
        session.commit()
    accepted = request(client, radiologist, study_id, "test-critical")
    complete_tasks(
        app, accepted["analysisId"], [finding(study_uid=south.record().study_instance_uid)], now=NOW
    )
    north = login(client, "dr.north", USER_PASSWORD)
    analysis = client.get(f"/api/analyses/{accepted['analysisId']}", headers=admin_headers).json()
    finding_id = analysis["findings"][0]["id"]
    for method, path, body in (
        ("POST", f"/api/v1/imaging/analyze/{study_id}", {"models": ["test-critical"]}),
        ("GET", f"/api/analyses/{accepted['analysisId']}", None),
        ("GET", f"/api/studies/{study_id}/analyses", None),
        (
            "POST",
            f"/api/analyses/{accepted['analysisId']}/findings/{finding_id}/review",
            {"decision": "accepted"},
        ),
    ):
        answer = client.request(method, path, json=body, headers=north)
        assert answer.status_code == 404, (method, path, answer.text)
    # Nothing was asked or reviewed on their behalf.
    assert [e.actor for e in audit_events(engine_of(app), "analysis.requested")] == [
        "radiologist-user"
    ]
    assert audit_events(engine_of(app), "analysis.finding_reviewed") == []


def test_a_studys_analyses_come_page_by_page_the_newest_first(
    app: FastAPI, client: TestClient, radiologist: Headers, admin_headers: Headers, study_id: int
) -> None:
    first = request(client, radiologist, study_id, "test-critical")
    second = request(client, admin_headers, study_id, "test-other", "test-critical")
    complete_tasks(app, first["analysisId"], [finding(), finding(Severity.LOW, "motion")], now=NOW)
    page = client.get(
        f"/api/studies/{study_id}/analyses", params={"limit": 1}, headers=radiologist
    ).json()
    assert (page["total"], page["offset"], page["limit"]) == (2, 0, 1)
    [newest] = page["items"]
    assert newest["analysisId"] == second["analysisId"]
    assert [t["analyzer"] for t in newest["tasks"]] == ["test-other", "test-critical"]
    assert newest["findingCount"] == 0
    older = client.get(
        f"/api/studies/{study_id}/analyses", params={"offset": 1}, headers=radiologist
    ).json()["items"]
    assert [(a["analysisId"], a["status"], a["findingCount"]) for a in older] == [
        (first["analysisId"], "COMPLETED", 2)
    ]
    assert older[0]["completedAt"] is not None
    assert older[0]["tasks"][0]["reportSopInstanceUID"] == "1.2.826.0.1.3680043.8.498.999.1"


def test_findings_in_seed_002s_shape_and_their_review(
    app: FastAPI,
    client: TestClient,
    radiologist: Headers,
    admin_headers: Headers,
    headers_for: HeadersFor,
    study_id: int,
) -> None:
    accepted = request(client, radiologist, study_id, "test-critical")
    analysis_id = accepted["analysisId"]
    complete_tasks(
        app,
        analysis_id,
        [
            finding(Severity.MODERATE, "clipped image", sop_uid="1.2.3.1.2"),
            finding(box=Box(10.5, 20.0, 30.0, 40.25)),
            finding(Severity.LOW, "fewer images than reported", sop_uid=None),
        ],
        now=NOW,
    )
    analysis = client.get(f"/api/analyses/{analysis_id}", headers=radiologist).json()
    assert analysis["status"] == "COMPLETED"
    critical, moderate, low = analysis["findings"]  # the most severe first
    assert critical == {
        "id": critical["id"],
        "model": "test-critical",
        "confidence": 0.75,
        "finding": "suspected pneumothorax",
        "severity": "critical",
        "recommendation": "review by a radiologist",
        "imageId": "1.2.3.1.1",
        "seriesInstanceUID": "1.2.3.1",
        "frame": None,
        "coordinates": {
            "x": 10.5,
            "y": 20.0,
            "width": 30.0,
            "height": 40.25,
            "imageId": "1.2.3.1.1",
            "seriesInstanceUID": "1.2.3.1",
            "frame": None,
        },
        "review": None,
    }
    assert (moderate["imageId"], moderate["coordinates"]) == ("1.2.3.1.2", None)
    assert (low["imageId"], low["coordinates"], low["severity"]) == (None, None, "low")
    # A critical AI finding raises no critical finding by itself.
    with Session(engine_of(app)) as session:
        assert session.exec(select(CriticalFinding)).all() == []

    path = f"/api/analyses/{analysis_id}/findings/{critical['id']}/review"
    # Administrators read analyses but do not make the clinical decision.
    assert (
        client.post(path, json={"decision": "accepted"}, headers=admin_headers).status_code == 403
    )
    reviewed = client.post(
        path,
        json={"decision": "ACCEPTED", "note": "confirmed on the lateral view"},
        headers=radiologist,
    )
    assert reviewed.status_code == 200, reviewed.text
    review = reviewed.json()["review"]
    assert review["decision"] == "accepted"
    assert review["reviewedBy"] == "radiologist-user"
    assert review["note"] == "confirmed on the lateral view"
    # The same decision again: the review already recorded, unchanged and not audited again.
    again = client.post(path, json={"decision": "accepted", "note": "again"}, headers=radiologist)
    assert again.status_code == 200
    assert again.json()["review"] == review
    # The other decision, by anyone: 409 naming who decided.
    other = headers_for(Role.RADIOLOGIST)
    conflict = client.post(path, json={"decision": "rejected"}, headers=other)
    assert conflict.status_code == 409, conflict.text
    assert "accepted by radiologist-user" in conflict.json()["error"]["message"]
    assert (
        client.get(f"/api/analyses/{analysis_id}", headers=radiologist).json()["findings"][0][
            "review"
        ]
        == review
    )
    reviews = audit_events(engine_of(app), "analysis.finding_reviewed")
    assert [
        (e.actor, e.entity_id, e.detail["finding_id"], e.detail["decision"]) for e in reviews
    ] == [("radiologist-user", str(analysis_id), critical["id"], "ACCEPTED")]
    # A finding is reviewed through its own analysis only.
    other_analysis = request(client, radiologist, study_id, "test-other")
    wrong = f"/api/analyses/{other_analysis['analysisId']}/findings/{moderate['id']}/review"
    assert client.post(wrong, json={"decision": "rejected"}, headers=radiologist).status_code == 404
    unknown_decision = client.post(
        f"/api/analyses/{analysis_id}/findings/{moderate['id']}/review",
        json={"decision": "maybe"},
        headers=radiologist,
    )
    assert unknown_decision.status_code == 422


def make_user(app: FastAPI, client: TestClient, role: Role) -> Headers:
    with Session(engine_of(app)) as session:
        session.add(
            User(username=f"{role.value}-1", password_hash=hash_password(USER_PASSWORD), role=role)
        )
        session.commit()
    return login(client, f"{role.value}-1", USER_PASSWORD)


def test_operator_models_are_asked_for_by_name_and_a_refused_one_is_refused_saying_why(
    database_url: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    install(models, detector([[0.0, 0.0, 0.5, 0.5]]), DETECTOR_MANIFEST)
    install(models, classifier(), CLASSIFIER_MANIFEST, sha256="0" * 64)  # not its checksum
    app = create_app(app_settings(database_url, tmp_path, ai_models_dir=models))
    with TestClient(app) as client:
        technologist = make_user(app, client, Role.TECHNOLOGIST)
        reader = make_user(app, client, Role.RADIOLOGIST)
        study_id = ready_study(app, client, technologist, now=NOW)
        refused = client.post(
            f"/api/v1/imaging/analyze/{study_id}", json={"models": ["brightness"]}, headers=reader
        )
        assert refused.status_code == 422, refused.text
        message = refused.json()["error"]["details"][0]["message"]
        assert message.startswith("analyzer brightness is refused: ")
        assert "the file is not the model the manifest describes" in message
        request(client, reader, study_id, "finder")
    with Session(engine_of(app)) as session:
        assert session.exec(select(AnalysisTask.analyzer, AnalysisTask.kind)).all() == [
            ("finder", AnalyzerKind.ONNX)
        ]


def test_an_external_analyzers_task_is_a_work_item_the_analysis_follows(
    database_url: str, tmp_path: Path
) -> None:
    app = create_app(
        app_settings(database_url, tmp_path, ai_external_analyzers="acme-nodules, quality")
    )
    with TestClient(app) as client:
        technologist = make_user(app, client, Role.TECHNOLOGIST)
        reader = make_user(app, client, Role.RADIOLOGIST)
        analyzer_account(engine_of(app), "acme")
        acme = login(client, "acme", ANALYZER_PASSWORD)
        study_id = ready_study(app, client, technologist, now=NOW)
        accepted = request(client, reader, study_id, "acme-nodules", priority="high")
        with Session(engine_of(app)) as session:
            # "quality" runs inside the sidecar whatever the setting says.
            assert service_of(app, AnalyzerRegistry).get("quality").kind == AnalyzerKind.BUILT_IN
            [task] = session.exec(select(AnalysisTask)).all()
            assert (task.analyzer, task.kind) == ("acme-nodules", AnalyzerKind.EXTERNAL)
            [item] = session.exec(select(Workitem)).all()
            assert (item.task_id, item.study_id) == (task.id, study_id)
            study = session.get(Study, study_id)
            assert study is not None
        # The runner leaves it to the external analyzer.
        assert service_of(app, AnalysisRunner).run_once() is None

        found = client.get("/dicom-web/workitems", headers={**acme, "Accept": DICOM_JSON})
        assert found.status_code == 200, found.text
        [listed] = [Dataset.from_json(one) for one in found.json()]
        assert listed.SOPInstanceUID == item.sop_instance_uid
        assert listed.ProcedureStepLabel == "acme-nodules"
        assert listed.ScheduledProcedureStepPriority == "HIGH"
        assert listed.InputInformationSequence[0].StudyInstanceUID == study.study_instance_uid

        state = Dataset()
        state.ProcedureStepState = "IN PROGRESS"
        state.TransactionUID = "2.25.4242"
        claimed = client.put(
            f"/dicom-web/workitems/{item.sop_instance_uid}/state",
            json=state.to_json_dict(),
            headers={**acme, "Content-Type": DICOM_JSON},
        )
        assert claimed.status_code == 200, claimed.text
        analysis = client.get(f"/api/analyses/{accepted['analysisId']}", headers=reader).json()
        assert analysis["status"] == "IN_PROGRESS"
        assert analysis["tasks"][0]["status"] == "IN_PROGRESS"
