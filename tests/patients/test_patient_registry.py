"""The patient registry through the API: orders and studies filed under their patient, the list
and its filters, an administrator's corrections and merges (and their guards), the audit trail,
and the migration that registers the patients of an older database. Both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.database import alembic_config, make_engine
from sidecar.main import create_app
from sidecar.patients import service as patients
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.studies.models import Study
from sidecar.tables import metadata

from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from reporting import add_user, sign, write_report
from stack import free_port
from testapp import USER_PASSWORD, app_settings, engine_of, login

Headers = dict[str, str]

ORDER = {
    "patientId": "MRN-7001",
    "issuerOfPatientId": "HOSP",
    "patientName": "KOWALSKI^ANNA",
    "patientBirthDate": "1961-04-05",
    "patientSex": "F",
    "modality": "CT",
    "procedureDescription": "CT chest",
    "scheduledAt": "2026-11-24T09:30:00+01:00",
}


def order(client: TestClient, headers: Headers, **changes: Any) -> dict[str, Any]:
    answer = client.post("/api/imaging-orders", json={**ORDER, **changes}, headers=headers)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def patient(client: TestClient, headers: Headers, record_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/patients/{record_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_orders_of_one_identifier_share_one_patient_whose_record_wins(
    client: TestClient, admin_headers: Headers
) -> None:
    first = order(client, admin_headers)
    second = order(client, admin_headers, patientName="KOWALSKA^ANNA", patientSex="O")
    other_issuer = order(client, admin_headers, issuerOfPatientId="CLINIC")
    assert first["patientRecordId"] == second["patientRecordId"] != other_issuer["patientRecordId"]
    # The second order's demographics are those of the patient it names.
    assert (second["patientName"], second["patientSex"]) == ("KOWALSKI^ANNA", "F")

    found = patient(client, admin_headers, first["patientRecordId"])
    assert found["patientId"] == "MRN-7001"
    assert found["issuerOfPatientId"] == "HOSP"
    assert found["patientBirthDate"] == "1961-04-05"
    assert found["status"] == "ACTIVE"
    assert found["mergedInto"] is None
    assert found["source"] == "order"
    assert found["counts"] == {"orders": 2, "studies": 0, "reports": 0}
    listed = client.get(found["links"]["orders"], headers=admin_headers).json()
    assert {o["id"] for o in listed["items"]} == {first["id"], second["id"]}


def test_the_list_filters_and_pages(client: TestClient, admin_headers: Headers) -> None:
    order(client, admin_headers)
    order(client, admin_headers, patientId="MRN-7002", patientName="kowalczyk^Jan")
    order(
        client,
        admin_headers,
        patientId="MRN-7003",
        patientName="NOWAK^PIOTR",
        issuerOfPatientId=None,
    )

    def ids(**params: Any) -> list[str]:
        answer = client.get("/api/patients", params=params, headers=admin_headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] >= len(body["items"])
        return sorted(p["patientId"] for p in body["items"])

    assert ids() == ["MRN-7001", "MRN-7002", "MRN-7003"]
    assert ids(name="kowal") == ["MRN-7001", "MRN-7002"]  # a prefix, any case
    assert ids(name="KOWALC") == ["MRN-7002"]
    assert ids(name="%") == []  # wildcards are literal
    assert ids(name="_OWAK") == []
    assert ids(issuer="HOSP") == ["MRN-7001", "MRN-7002"]
    assert ids(patientId="MRN-7003") == ["MRN-7003"]
    assert ids(birthDate="1961-04-05") == ["MRN-7001", "MRN-7002", "MRN-7003"]
    assert ids(birthDate="1961-04-06") == []
    page = client.get("/api/patients", params={"limit": 2, "offset": 2}, headers=admin_headers)
    assert (page.json()["total"], len(page.json()["items"])) == (3, 1)
    assert (
        client.get("/api/patients", params={"limit": 0}, headers=admin_headers).status_code == 422
    )


def test_a_correction_reaches_every_order_and_study_and_is_audited(
    app: FastAPI, client: TestClient, admin_headers: Headers, technologist: Headers
) -> None:
    first = order(client, admin_headers)
    study_id = seed_study(
        engine_of(app),
        orthanc_study(
            f"{UID_ROOT}.7001", accession_number=first["accessionNumber"], patient_id="MRN-7001"
        ),
    )
    linked = client.post(
        f"/api/studies/{study_id}/link-order", json={"orderId": first["id"]}, headers=admin_headers
    )
    assert linked.status_code == 200, linked.text
    record = first["patientRecordId"]
    assert linked.json()["patientRecordId"] == record

    refused = client.patch(
        f"/api/patients/{record}", json={"patientName": "X^Y"}, headers=technologist
    )
    assert refused.status_code == 403
    corrected = client.patch(
        f"/api/patients/{record}",
        json={"patientName": "KOWALSKA^ANNA^MARIA", "patientBirthDate": "1961-05-04"},
        headers=admin_headers,
    )
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["counts"] == {"orders": 1, "studies": 1, "reports": 0}
    now = client.get(f"/api/imaging-orders/{first['id']}", headers=admin_headers).json()
    study = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
    for copy in (now, study):
        assert copy["patientName"] == "KOWALSKA^ANNA^MARIA"
        assert copy["patientBirthDate"] == "1961-05-04"
    events = audit_events(engine_of(app), "patient.updated")
    assert [(e.actor, e.entity_id, e.detail["fields"]) for e in events] == [
        ("admin", str(record), ["patient_birth_date", "patient_name"])
    ]
    # An order's demographics are its patient's: corrected there, not on one order.
    on_order = client.patch(
        f"/api/imaging-orders/{first['id']}", json={"patientName": "X^Y"}, headers=admin_headers
    )
    assert on_order.status_code == 422
    assert on_order.json()["error"]["details"][0]["location"] == "body.patientName"


def test_a_new_identifier_keeps_the_history_and_refuses_a_taken_one(
    client: TestClient, admin_headers: Headers
) -> None:
    first = order(client, admin_headers)
    order(client, admin_headers, patientId="MRN-7002")
    record = first["patientRecordId"]
    taken = client.patch(
        f"/api/patients/{record}", json={"patientId": "MRN-7002"}, headers=admin_headers
    )
    assert taken.status_code == 409
    changed = client.patch(
        f"/api/patients/{record}", json={"patientId": "MRN-7009"}, headers=admin_headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["patientId"] == "MRN-7009"
    now = client.get(f"/api/imaging-orders/{first['id']}", headers=admin_headers).json()
    assert (now["patientId"], now["patientRecordId"]) == ("MRN-7009", record)


def test_a_merge_moves_everything_and_its_guards_hold(
    app: FastAPI, client: TestClient, admin_headers: Headers, radiologist: Headers
) -> None:
    survivor_order = order(client, admin_headers)
    prior_order = order(
        client, admin_headers, patientId="MRN-7666", patientName="DOE^JOHN", patientBirthDate=None
    )
    study_id = seed_study(
        engine_of(app),
        orthanc_study(
            f"{UID_ROOT}.7666",
            accession_number=prior_order["accessionNumber"],
            patient_id="MRN-7666",
        ),
    )
    assert (
        client.post(
            f"/api/studies/{study_id}/link-order",
            json={"orderId": prior_order["id"]},
            headers=admin_headers,
        ).status_code
        == 200
    )
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])
    survivor, prior = survivor_order["patientRecordId"], prior_order["patientRecordId"]

    def merge(record: int, into: int) -> Any:
        return client.post(
            f"/api/patients/{record}/merge",
            json={"survivingPatientId": into},
            headers=admin_headers,
        )

    assert merge(prior, prior).status_code == 409  # into itself
    merged = merge(prior, survivor)
    assert merged.status_code == 200, merged.text
    assert (merged.json()["status"], merged.json()["mergedInto"]) == ("MERGED", survivor)
    assert merged.json()["counts"] == {"orders": 0, "studies": 0, "reports": 0}
    moved = client.get(f"/api/imaging-orders/{prior_order['id']}", headers=admin_headers).json()
    study = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
    for copy in (moved, study):
        assert (copy["patientRecordId"], copy["patientId"]) == (survivor, "MRN-7001")
        assert copy["patientName"] == "KOWALSKI^ANNA"
    assert patient(client, admin_headers, survivor)["counts"] == {
        "orders": 2,
        "studies": 1,
        "reports": 1,
    }
    events = audit_events(engine_of(app), "patient.merged")
    assert len(events) == 1
    assert events[0].detail["order_ids"] == [prior_order["id"]]
    assert events[0].detail["study_ids"] == [study_id]
    assert events[0].detail["report_ids"] == [report["id"]]
    assert events[0].detail["surviving_patient_record_id"] == survivor
    assert (events[0].actor, events[0].detail["cause"]) == ("admin", "api")

    # Sent again, or with the two swapped: nothing changes.
    assert merge(prior, survivor).status_code == 200
    assert merge(survivor, prior).status_code == 200
    assert patient(client, admin_headers, survivor)["status"] == "ACTIVE"
    assert len(audit_events(engine_of(app), "patient.merged")) == 1
    # A new order under the merged-away identifier is refused, naming the survivor.
    refused = client.post(
        "/api/imaging-orders", json={**ORDER, "patientId": "MRN-7666"}, headers=admin_headers
    )
    assert refused.status_code == 409
    assert f"patient {survivor}" in refused.json()["error"]["message"]

    # A merge into a merged patient follows the chain to its survivor.
    third = order(client, admin_headers, patientId="MRN-7667")["patientRecordId"]
    assert merge(third, prior).json()["mergedInto"] == survivor


def test_a_late_study_under_a_merged_identifier_is_filed_under_the_survivor(
    app: FastAPI, client: TestClient, admin_headers: Headers
) -> None:
    survivor = order(client, admin_headers)["patientRecordId"]
    prior = order(client, admin_headers, patientId="MRN-7666")["patientRecordId"]
    merge = client.post(
        f"/api/patients/{prior}/merge", json={"survivingPatientId": survivor}, headers=admin_headers
    )
    assert merge.status_code == 200
    study_id = seed_study(
        engine_of(app),
        orthanc_study(f"{UID_ROOT}.7668", accession_number="U7668", patient_id="MRN-7666"),
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.issuer_of_patient_id = "HOSP"
        patients.attach_study(session, study, default_issuer=None, actor="test")
        session.commit()
    filed = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()
    assert (filed["patientRecordId"], filed["patientId"]) == (survivor, "MRN-7001")
    assert filed["patientIdentityIssue"] == patients.MERGED_IDENTIFIER


def test_a_study_without_an_order_or_issuer_takes_the_default_issuer(
    tmp_path: Path, database_url: str
) -> None:
    app = create_app(app_settings(database_url, tmp_path, default_issuer="HOSP"))
    with TestClient(app) as client:
        admin = login(client, "admin", "admin-password-for-tests")
        known = order(client, admin)
        created = client.post(
            "/api/studies",
            json={"patientId": "MRN-7001", "patientName": "OTHER^NAME"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        assert created.json()["patientRecordId"] == known["patientRecordId"]
        assert created.json()["patientName"] == "KOWALSKI^ANNA"
        unknown = client.post(
            "/api/studies", json={"patientId": "MRN-7005", "patientName": "NEW^ONE"}, headers=admin
        ).json()
        registered = patient(client, admin, unknown["patientRecordId"])
        assert (registered["issuerOfPatientId"], registered["source"]) == ("HOSP", "dicom")
        assert registered["patientName"] == "NEW^ONE"


def test_the_migration_registers_the_patients_of_an_older_database(database_url: str) -> None:
    engine = make_engine(database_url)
    config = alembic_config(engine, metadata)
    try:
        command.downgrade(config, "0009")
        with engine.begin() as connection:
            for number, (patient_id, issuer, name, updated) in enumerate(
                [
                    ("MRN-7001", "HOSP", "OLD^NAME", "2026-01-01 10:00:00"),
                    ("MRN-7001", "HOSP", "KOWALSKI^ANNA", "2026-02-01 10:00:00"),
                    ("MRN-7001", None, "NO^ISSUER", "2026-01-01 10:00:00"),
                ],
                start=1,
            ):
                connection.execute(
                    sa.text(
                        "INSERT INTO imaging_order (accession_number, study_instance_uid, "
                        "patient_id, issuer_of_patient_id, patient_name, modality, priority, "
                        "status, source, created_at, updated_at) VALUES (:acc, :uid, :pid, "
                        ":issuer, :name, 'CT', 'ROUTINE', 'PENDING', 'api', :at, :at)"
                    ),
                    {
                        "acc": f"ACC-{number}",
                        "uid": f"1.2.3.{number}",
                        "pid": patient_id,
                        "issuer": issuer,
                        "name": name,
                        "at": updated,
                    },
                )
            for number, (patient_id, order_id) in enumerate(
                [("MRN-7001", 2), ("MRN-7004", None)], start=1
            ):
                connection.execute(
                    sa.text(
                        "INSERT INTO study (study_instance_uid, patient_id, modalities, "
                        "series_count, instance_count, status, created_at, updated_at, order_id) "
                        "VALUES (:uid, :pid, 'CT', 0, 0, 'COMPLETED', :at, :at, :order)"
                    ),
                    {
                        "uid": f"1.2.4.{number}",
                        "pid": patient_id,
                        "order": order_id,
                        "at": "2026-01-01 10:00:00",
                    },
                )
        command.upgrade(config, "head")
        with engine.connect() as connection:
            registered = connection.execute(
                sa.text(
                    "SELECT patient_id, issuer_of_patient_id, patient_name, status, source "
                    "FROM patient ORDER BY patient_id, issuer_of_patient_id"
                )
            ).all()
            assert [tuple(row) for row in registered] == [
                ("MRN-7001", "", "NO^ISSUER", "ACTIVE", "migration"),
                ("MRN-7001", "HOSP", "KOWALSKI^ANNA", "ACTIVE", "migration"),
                ("MRN-7004", "", None, "ACTIVE", "migration"),
            ]
            ids: dict[str, int] = dict(
                connection.execute(
                    sa.text("SELECT patient_id || '|' || issuer_of_patient_id, id FROM patient")
                ).all()
            )
            orders = connection.execute(
                sa.text("SELECT accession_number, patient_record_id FROM imaging_order")
            ).all()
            assert dict(orders) == {
                "ACC-1": ids["MRN-7001|HOSP"],
                "ACC-2": ids["MRN-7001|HOSP"],
                "ACC-3": ids["MRN-7001|"],
            }
            studies = connection.execute(
                sa.text("SELECT study_instance_uid, patient_record_id FROM study")
            ).all()
            # Linked to order 2: its order's patient, whatever the study's own columns say.
            assert dict(studies) == {"1.2.4.1": ids["MRN-7001|HOSP"], "1.2.4.2": ids["MRN-7004|"]}
    finally:
        engine.dispose()


def test_a_result_signed_after_a_merge_carries_the_surviving_patient(
    tmp_path: Path, database_url: str
) -> None:
    # The HIS is down (a closed port): the result waits in the outbox, its text already fixed.
    settings = app_settings(
        database_url, tmp_path, his_mllp_host="127.0.0.1", his_mllp_port=free_port()
    )
    with TestClient(create_app(settings)) as client:
        admin = login(client, "admin", "admin-password-for-tests")
        survivor = order(client, admin)
        prior = order(client, admin, patientId="MRN-7666", patientName="DOE^JOHN")
        study_id = seed_study(
            engine_of(client.app),  # type: ignore[arg-type]
            orthanc_study(
                f"{UID_ROOT}.7669", accession_number=prior["accessionNumber"], patient_id="MRN-7666"
            ),
        )
        linked = client.post(
            f"/api/studies/{study_id}/link-order", json={"orderId": prior["id"]}, headers=admin
        )
        assert linked.status_code == 200, linked.text
        merged = client.post(
            f"/api/patients/{prior['patientRecordId']}/merge",
            json={"survivingPatientId": survivor["patientRecordId"]},
            headers=admin,
        )
        assert merged.status_code == 200, merged.text
        add_user(client.app, "dr.reader", Role.RADIOLOGIST)  # type: ignore[arg-type]
        reader = login(client, "dr.reader", USER_PASSWORD)
        sign(client, reader, write_report(client, reader, study_id)["id"])
        sent = client.get("/api/hl7/messages", params={"direction": "out"}, headers=admin)
        # The exam's start (IP, queued before the merge and rewritten by it), the result, and
        # the order completed: every one names the surviving patient.
        waiting = sent.json()["items"]
        assert [(m["messageType"], m["orderStatus"]) for m in waiting] == [
            ("ORM^O01", "CM"),
            ("ORU^R01", None),
            ("ORM^O01", "IP"),
        ]
        for message in waiting:
            raw = client.get(f"/api/hl7/messages/{message['id']}", headers=admin).json()["raw"]
            pid = next(line for line in raw.split("\r") if line.startswith("PID|"))
            assert pid == SURVIVOR_PID
            assert "MRN-7666" not in raw and "DOE^JOHN" not in raw


#: The PID of a result for the surviving patient of these tests, as results are built.
SURVIVOR_PID = "PID|1||MRN-7001^^^HOSP^MR||KOWALSKI^ANNA||19610405|F"


def test_a_result_waiting_for_the_his_during_a_merge_goes_out_for_the_survivor(
    tmp_path: Path, database_url: str
) -> None:
    settings = app_settings(
        database_url, tmp_path, his_mllp_host="127.0.0.1", his_mllp_port=free_port()
    )
    with TestClient(create_app(settings)) as client:
        admin = login(client, "admin", "admin-password-for-tests")
        survivor = order(client, admin)
        prior = order(client, admin, patientId="MRN-7666", patientName="DOE^JOHN")
        study_id = seed_study(
            engine_of(client.app),  # type: ignore[arg-type]
            orthanc_study(
                f"{UID_ROOT}.7670", accession_number=prior["accessionNumber"], patient_id="MRN-7666"
            ),
        )
        linked = client.post(
            f"/api/studies/{study_id}/link-order", json={"orderId": prior["id"]}, headers=admin
        )
        assert linked.status_code == 200, linked.text
        add_user(client.app, "dr.reader", Role.RADIOLOGIST)  # type: ignore[arg-type]
        reader = login(client, "dr.reader", USER_PASSWORD)
        sign(client, reader, write_report(client, reader, study_id)["id"])
        [queued] = client.get(
            "/api/hl7/messages",
            params={"direction": "out", "messageType": "ORU^R01"},  # not the status updates
            headers=admin,
        ).json()["items"]
        before = client.get(f"/api/hl7/messages/{queued['id']}", headers=admin).json()["raw"]
        assert "MRN-7666" in before
        merged = client.post(
            f"/api/patients/{prior['patientRecordId']}/merge",
            json={"survivingPatientId": survivor["patientRecordId"]},
            headers=admin,
        )
        assert merged.status_code == 200, merged.text
        after = client.get(f"/api/hl7/messages/{queued['id']}", headers=admin).json()
        assert after["status"] == "pending"
        assert after["controlId"] == queued["controlId"]  # the same message, resent as is
        lines = after["raw"].split("\r")
        assert next(line for line in lines if line.startswith("PID|")) == SURVIVOR_PID
        assert [line for line in lines if not line.startswith("PID|")] == [
            line for line in before.split("\r") if not line.startswith("PID|")
        ]


def test_an_administrator_moves_a_mismatched_study_to_its_orders_patient(
    app: FastAPI,
    client: TestClient,
    admin_headers: Headers,
    technologist: Headers,
) -> None:
    target = order(client, admin_headers)
    # Images under a patient id the modality typed wrong: filed under that id, not linked.
    study_id = seed_study(
        engine_of(app),
        orthanc_study(
            f"{UID_ROOT}.7670", accession_number=target["accessionNumber"], patient_id="MRN-TYPO"
        ),
    )
    with Session(engine_of(app)) as session:
        study = session.get(Study, study_id)
        assert study is not None
        patients.attach_study(session, study, default_issuer=None, actor="test")
        session.commit()
    wrong = client.get(f"/api/studies/{study_id}", headers=admin_headers).json()["patientRecordId"]

    def link(headers: Headers, **body: Any) -> Any:
        return client.post(
            f"/api/studies/{study_id}/link-order",
            json={"orderId": target["id"], **body},
            headers=headers,
        )

    refused = link(admin_headers)
    assert refused.status_code == 409
    assert "moveToOrderPatient" in refused.json()["error"]["message"]
    assert link(technologist, moveToOrderPatient=True).status_code == 403
    assert link(admin_headers, moveToOrderPatient="maybe").status_code == 422

    moved = link(admin_headers, moveToOrderPatient=True)
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert (body["orderId"], body["patientId"], body["patientRecordId"]) == (
        target["id"],
        "MRN-7001",
        target["patientRecordId"],
    )
    assert body["patientIdentityIssue"]  # until Orthanc's files follow
    with Session(engine_of(app)) as session:
        queued = session.get(ImageUpdate, study_id)
        assert queued is not None
        assert (queued.status, queued.cause) == (ImageUpdateStatus.PENDING, "move")
    [event] = audit_events(engine_of(app), "study.moved_to_order_patient")
    assert event.actor == "admin"
    assert (event.detail["prior_patient_record_id"], event.detail["patient_record_id"]) == (
        wrong,
        target["patientRecordId"],
    )
    assert link(admin_headers, moveToOrderPatient=True).status_code == 409  # linked already
