"""Radiology reports over the API: write, sign, amend, versions, concurrency, roles, reading.

No HIS is configured here (results are not sent; an order completes when its report is
signed); delivery to a HIS is in test_result_delivery.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, select

from sidecar.accounts.models import Role, User
from sidecar.reports import service as reports
from sidecar.reports.models import RadiologyReport

from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from reporting import SECTIONS, add_user, ordered_study, sign, write_report
from testapp import engine_of, login

Headers = dict[str, str]


@pytest.fixture
def study_id(app: FastAPI, client: TestClient, technologist: Headers) -> int:
    return ordered_study(app, client, technologist)[0]


def test_a_radiologist_writes_a_preliminary_report_and_the_study_follows(
    client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    response = client.post(
        "/api/reports", json={"studyId": study_id, **SECTIONS}, headers=radiologist
    )

    assert response.status_code == 201, response.text
    report = response.json()
    assert report["status"] == "PRELIMINARY"
    assert report["findings"] == SECTIONS["findings"]
    assert (report["version"], report["revision"]) == (1, 0)
    assert response.headers["ETag"] == '"1"'
    assert report["orderId"] is not None
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert study["status"] == "PRELIMINARY"


def test_a_study_gets_one_report_and_only_once_its_images_have_arrived(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    write_report(client, radiologist, study_id)
    second = client.post("/api/reports", json={"studyId": study_id}, headers=radiologist)
    assert second.status_code == 409
    assert "already has report" in second.json()["error"]["message"]

    announced = client.post(
        "/api/studies", json={"patientId": "PAT-0009", "modalities": ["CT"]}, headers=technologist
    )
    assert announced.status_code == 201, announced.text
    early = client.post(
        "/api/reports", json={"studyId": announced.json()["id"]}, headers=radiologist
    )
    assert early.status_code == 409
    assert "SCHEDULED" in early.json()["error"]["message"]

    missing = client.post("/api/reports", json={"studyId": 999999}, headers=radiologist)
    assert missing.status_code == 404


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.PHYSICIAN, Role.ADMIN, Role.INTEGRATION])
def test_only_radiologists_write_sign_amend_and_delete(
    client: TestClient,
    headers_for: Callable[[Role], Headers],
    radiologist: Headers,
    study_id: int,
    role: Role,
) -> None:
    other = headers_for(role)
    assert client.post("/api/reports", json={"studyId": study_id}, headers=other).status_code == 403
    report = write_report(client, radiologist, study_id)
    rid = report["id"]
    assert client.patch(f"/api/reports/{rid}", json={}, headers=other).status_code == 403
    assert client.post(f"/api/reports/{rid}/sign", headers=other).status_code == 403
    amend = {"reason": "x", "impression": "y"}
    assert client.post(f"/api/reports/{rid}/amend", json=amend, headers=other).status_code == 403
    assert client.delete(f"/api/reports/{rid}", headers=other).status_code == 403


def test_signing_makes_revision_one_final_and_completes_the_order_without_a_his(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    report = write_report(client, radiologist, study_id)

    signed = sign(client, radiologist, report["id"])

    assert signed["status"] == "FINAL"
    assert signed["revision"] == 1
    assert signed["signedAt"] is not None
    assert signed["version"] == report["version"] + 1
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert study["status"] == "FINAL"
    order = client.get(f"/api/imaging-orders/{signed['orderId']}", headers=technologist).json()
    assert order["status"] == "COMPLETED"
    assert [e.entity_id for e in audit_events(engine_of(app), "report.signed")] == [
        str(report["id"])
    ]


def test_a_signed_report_never_changes_and_cannot_be_signed_twice(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    rid = report["id"]

    edit = client.patch(f"/api/reports/{rid}", json={"impression": "changed"}, headers=radiologist)
    assert edit.status_code == 409
    assert "amend" in edit.json()["error"]["message"]
    assert client.post(f"/api/reports/{rid}/sign", headers=radiologist).status_code == 409
    assert client.delete(f"/api/reports/{rid}", headers=radiologist).status_code == 409
    assert (
        client.get(f"/api/reports/{rid}", headers=radiologist).json()["impression"]
        == (SECTIONS["impression"])
    )


def test_signing_needs_findings_or_an_impression(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    report = write_report(client, radiologist, study_id, technique="CT head.")

    response = client.post(f"/api/reports/{report['id']}/sign", headers=radiologist)

    assert response.status_code == 400
    assert "neither findings nor an impression" in response.json()["error"]["message"]


def test_amendments_are_new_revisions_and_every_earlier_one_stays_readable(
    app: FastAPI, client: TestClient, radiologist: Headers, study_id: int
) -> None:
    rid = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])["id"]

    amended = client.post(
        f"/api/reports/{rid}/amend",
        json={"impression": "Acute left subdural haematoma; no herniation.", "reason": "addendum"},
        headers=radiologist,
    )
    assert amended.status_code == 200, amended.text
    assert (amended.json()["status"], amended.json()["revision"]) == ("AMENDED", 2)
    corrected = client.post(
        f"/api/reports/{rid}/amend",
        json={
            "findings": "Left subdural haematoma, 10 mm shift.",
            "reason": "wrong measurement",
            "kind": "CORRECTED",
        },
        headers=radiologist,
    )
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["status"] == "CORRECTED"

    versions = client.get(f"/api/reports/{rid}/versions", headers=radiologist).json()
    assert [(v["revision"], v["status"], v["reason"]) for v in versions] == [
        (1, "FINAL", None),
        (2, "AMENDED", "addendum"),
        (3, "CORRECTED", "wrong measurement"),
    ]
    assert versions[0]["impression"] == SECTIONS["impression"]
    assert versions[1]["impression"].endswith("no herniation.")
    assert versions[1]["findings"] == SECTIONS["findings"]
    assert versions[2]["findings"] == "Left subdural haematoma, 10 mm shift."
    assert len(audit_events(engine_of(app), "report.amended")) == 2


def test_an_amendment_needs_a_reason_and_a_change(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    rid = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])["id"]

    no_reason = client.post(
        f"/api/reports/{rid}/amend", json={"impression": "x"}, headers=radiologist
    )
    no_change = client.post(
        f"/api/reports/{rid}/amend", json={"reason": "why"}, headers=radiologist
    )

    assert no_reason.status_code == 422
    assert no_change.status_code == 400


def test_a_stale_version_or_etag_answers_409_and_changes_nothing(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    report = write_report(client, radiologist, study_id)
    rid = report["id"]
    first = client.patch(
        f"/api/reports/{rid}", json={"impression": "first", "version": 1}, headers=radiologist
    )
    assert first.status_code == 200
    assert first.headers["ETag"] == '"2"'

    stale_body = client.patch(
        f"/api/reports/{rid}", json={"impression": "second", "version": 1}, headers=radiologist
    )
    stale_etag = client.post(f"/api/reports/{rid}/sign", headers={**radiologist, "If-Match": '"1"'})
    bad_etag = client.post(f"/api/reports/{rid}/sign", headers={**radiologist, "If-Match": "x"})

    assert stale_body.status_code == 409
    assert "version 2, not 1" in stale_body.json()["error"]["message"]
    assert stale_etag.status_code == 409
    assert bad_etag.status_code == 400
    current = client.get(f"/api/reports/{rid}", headers=radiologist)
    assert (current.json()["impression"], current.json()["status"]) == ("first", "PRELIMINARY")
    signed = client.post(f"/api/reports/{rid}/sign", headers={**radiologist, "If-Match": '"2"'})
    assert signed.status_code == 200


def test_two_signatures_racing_on_one_version_one_wins_and_the_other_is_refused(
    app: FastAPI, client: TestClient, radiologist: Headers, study_id: int
) -> None:
    rid = write_report(client, radiologist, study_id)["id"]
    with Session(engine_of(app)) as first, Session(engine_of(app)) as second:
        # Both read the same version before either writes: the version check in the UPDATE
        # itself must refuse the loser.
        mine, theirs = first.get(RadiologyReport, rid), second.get(RadiologyReport, rid)
        signer = select(User).where(User.role == Role.RADIOLOGIST)
        user_a, user_b = first.exec(signer).one(), second.exec(signer).one()
        assert mine is not None and theirs is not None
        reports.sign_report(first, mine, user_a, expected_version=mine.version)
        first.commit()
        with pytest.raises(StaleDataError):
            reports.sign_report(second, theirs, user_b, expected_version=theirs.version)
            second.commit()

    final = client.get(f"/api/reports/{rid}/versions", headers=radiologist).json()
    assert [v["revision"] for v in final] == [1]


def test_two_signs_with_the_same_etag_over_http_one_wins_one_409(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    rid = write_report(client, radiologist, study_id)["id"]
    etag = client.get(f"/api/reports/{rid}", headers=radiologist).headers["ETag"]

    answers = sorted(
        client.post(
            f"/api/reports/{rid}/sign", headers={**radiologist, "If-Match": etag}
        ).status_code
        for _ in range(2)
    )

    assert answers == [200, 409]


def test_deleting_a_preliminary_report_keeps_it_on_record_and_frees_the_study(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    rid = write_report(client, radiologist, study_id)["id"]

    deleted = client.delete(f"/api/reports/{rid}", headers=radiologist)

    assert deleted.status_code == 204
    assert client.get(f"/api/reports/{rid}", headers=radiologist).status_code == 404
    study = client.get(f"/api/studies/{study_id}", headers=technologist).json()
    assert study["status"] == "COMPLETED"
    assert client.get(f"/api/reports/study/{study_id}", headers=radiologist).json()["total"] == 0
    with Session(engine_of(app)) as session:
        kept = session.get(RadiologyReport, rid)
        assert kept is not None and kept.deleted_at is not None
    assert write_report(client, radiologist, study_id)["id"] != rid
    assert [e.entity_id for e in audit_events(engine_of(app), "report.deleted")] == [str(rid)]


def test_lists_by_study_and_by_radiologist(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    other_study = ordered_study(app, client, technologist, patient_id="PAT-0002")[0]
    add_user(app, "second-radiologist", Role.RADIOLOGIST)
    second = login(client, "second-radiologist", "user-password-for-tests")
    mine = write_report(client, radiologist, study_id)
    theirs = write_report(client, second, other_study)

    by_study = client.get(f"/api/reports/study/{study_id}", headers=technologist).json()
    by_author = client.get(
        f"/api/reports/radiologist/{theirs['radiologistId']}", headers=radiologist
    ).json()

    assert [r["id"] for r in by_study["items"]] == [mine["id"]]
    assert [r["id"] for r in by_author["items"]] == [theirs["id"]]


def test_a_physician_reads_the_signed_reports_of_their_own_patients_only(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    signed = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    draft_study = ordered_study(app, client, technologist)[0]  # same patient, same provider
    draft = write_report(client, radiologist, draft_study)
    stranger_study = ordered_study(
        app, client, technologist, patient_id="PAT-0666", provider_id="DR-9999"
    )[0]
    stranger = sign(client, radiologist, write_report(client, radiologist, stranger_study)["id"])
    # An order with no provider id must not open its patient to physicians without one.
    anonymous_study = ordered_study(
        app, client, technologist, patient_id="PAT-0777", provider_id=None
    )[0]
    sign(client, radiologist, write_report(client, radiologist, anonymous_study)["id"])
    add_user(app, "dr-house", Role.PHYSICIAN, provider_id="DR-0042")
    add_user(app, "dr-unlinked", Role.PHYSICIAN)
    house = login(client, "dr-house", "user-password-for-tests")
    unlinked = login(client, "dr-unlinked", "user-password-for-tests")

    listed = client.get("/api/reports", headers=house).json()
    assert [r["id"] for r in listed["items"]] == [signed["id"]]
    assert client.get(f"/api/reports/{signed['id']}", headers=house).status_code == 200
    assert client.get(f"/api/reports/{draft['id']}", headers=house).status_code == 404
    assert client.get(f"/api/reports/{stranger['id']}", headers=house).status_code == 404
    assert client.get("/api/reports", headers=unlinked).json()["total"] == 0
    assert client.get(f"/api/reports/{signed['id']}", headers=unlinked).status_code == 404
    # Other clinicians read every report.
    assert client.get("/api/reports", headers=technologist).json()["total"] == 4


def test_a_physicians_patient_is_the_patient_id_with_its_issuer(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    """Dr House ordered for hospital HOSP's patient PAT-0001; another hospital's PAT-0001 is
    another person, whose reports he must not read (nor learn that they exist)."""
    theirs = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    other_hospital = ordered_study(
        app, client, technologist, patient_id="PAT-0001", provider_id="DR-9999", issuer="OTHER"
    )[0]
    foreign = sign(client, radiologist, write_report(client, radiologist, other_hospital)["id"])
    add_user(app, "dr-house", Role.PHYSICIAN, provider_id="DR-0042")
    house = login(client, "dr-house", "user-password-for-tests")

    listed = client.get("/api/reports", params={"patientId": "PAT-0001"}, headers=house).json()
    assert [r["id"] for r in listed["items"]] == [theirs["id"]]
    assert client.get(f"/api/reports/{foreign['id']}", headers=house).status_code == 404
    assert client.get(f"/api/reports/study/{other_hospital}", headers=house).json()["total"] == 0
    # The study took its order's patient, issuer included.
    study = client.get(f"/api/studies/{other_hospital}", headers=technologist).json()
    assert (study["patientId"], study["issuerOfPatientId"]) == ("PAT-0001", "OTHER")


def test_reports_filter_by_patient_and_status(
    app: FastAPI, client: TestClient, radiologist: Headers, technologist: Headers, study_id: int
) -> None:
    signed = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    other = ordered_study(app, client, technologist, patient_id="PAT-0002")[0]
    write_report(client, radiologist, other)

    final = client.get("/api/reports", params={"status": "FINAL"}, headers=radiologist).json()
    patient = client.get(
        "/api/reports", params={"patientId": "PAT-0001"}, headers=radiologist
    ).json()

    assert [r["id"] for r in final["items"]] == [signed["id"]]
    assert [r["id"] for r in patient["items"]] == [signed["id"]]


def test_a_report_renders_as_text_and_as_escaped_html(
    client: TestClient, radiologist: Headers, study_id: int
) -> None:
    rid = write_report(
        client, radiologist, study_id, findings="<script>alert(1)</script> mass", impression="Mass."
    )["id"]
    sign(client, radiologist, rid)

    text = client.get(f"/api/reports/{rid}/rendering", headers=radiologist)
    html = client.get(f"/api/reports/{rid}/rendering?format=html", headers=radiologist)
    wrong = client.get(f"/api/reports/{rid}/rendering?format=docx", headers=radiologist)

    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert "FINDINGS\n<script>alert(1)</script> mass" in text.text
    assert "Patient:" in text.text and "JANE DOE" in text.text
    assert "Signed by radiologist-user" in text.text
    assert html.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;" in html.text and "<script>" not in html.text
    assert "<h2>Impression</h2>" in html.text
    assert wrong.status_code == 422


def test_an_unlinked_study_can_be_reported(
    app: FastAPI, client: TestClient, radiologist: Headers
) -> None:
    study_id = seed_study(engine_of(app), orthanc_study(f"{UID_ROOT}.88.1"))

    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    assert report["orderId"] is None
    assert report["status"] == "FINAL"
