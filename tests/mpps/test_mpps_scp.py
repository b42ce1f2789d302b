"""The MPPS SCP over real DICOM associations (pynetdicom as the modality), with the HIS on
loopback: what each N-CREATE and N-SET does to the order, the worklist and the HIS, and the DIMSE
status every wrong request gets (never a dropped association).

The tests share one app, SCP and HIS (below); each looks only at what came since it began."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.core.audit import AuditEvent
from sidecar.core.settings import Settings
from sidecar.main import create_app
from sidecar.mpps.models import PerformedProcedureStep
from sidecar.mpps.scp import MppsListener
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.results.outbox import ResultOutbox

from builders import UID_ROOT, audit_events, orthanc_study, seed_study
from his_simulator import HisSimulator, Received
from modality import Modality, completed, discontinued, in_progress, modality
from stack import wait_for
from testapp import ADMIN_PASSWORD, app_settings, engine_of, login, service_of

Headers = dict[str, str]
_numbers = iter(range(1, 10_000))


def mpps_settings(his: HisSimulator) -> dict[str, Any]:
    """The SCP on (an ephemeral port), and order status updates going to the HIS."""
    return {
        "mpps_enabled": True,
        "mpps_port": 0,
        "his_mllp_host": "127.0.0.1",
        "his_mllp_port": his.port,
        "his_mllp_timeout": 2.0,
        "his_application": "HIS",
        "his_facility": "GENERAL",
        "result_retry_max_delay": 0.2,
    }


# One app, SCP and HIS for the module: most of a test's time was its own app starting and
# stopping. Each test has orders, UIDs and patients of its own and looks at what came since it
# began (`since`), with every status update of the test before delivered (`drained`); a test
# that takes the HIS down or counts every audit event has a database and a HIS of its own.


@pytest.fixture(scope="module")
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture(scope="module")
def settings(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, his: HisSimulator
) -> Settings:
    return app_settings(module_database_url, tmp_path_factory.mktemp("mpps"), **mpps_settings(his))


@pytest.fixture(scope="module")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin_headers(client: TestClient) -> Headers:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def scp_port(app: FastAPI, client: TestClient) -> int:
    return scp_port_of(app)


def scp_port_of(app: FastAPI) -> int:
    port = service_of(app, MppsListener).port
    assert port is not None, "the MPPS SCP did not start"
    return port


@pytest.fixture
def dx01(scp_port: int) -> Iterator[Modality]:
    with modality(scp_port) as running:
        yield running


@pytest.fixture(autouse=True)
def drained(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the module's app, every status update it queued has reached the HIS: none
    arrives during the next test."""
    app = request.getfixturevalue("app") if "app" in request.fixturenames else None
    yield
    if app is not None:
        wait_for(lambda: not pending_updates(app), timeout=20, what="status updates delivered")


def pending_updates(app: FastAPI) -> list[Hl7Message]:
    with Session(engine_of(app)) as session:
        query = select(Hl7Message).where(
            Hl7Message.direction == Hl7Direction.OUTBOUND,
            Hl7Message.status == Hl7MessageStatus.PENDING,
        )
        return list(session.exec(query).all())


class Since:
    """What the module's app stored and its HIS filed since the test began: what a database and
    a HIS of the test's own would hold."""

    def __init__(self, app: FastAPI, his: HisSimulator) -> None:
        self.engine = engine_of(app)
        self.his = his
        self.filed_before = {message.control_id for message in his.filed()}
        with Session(self.engine) as session:
            self.step_id = last_id(session, PerformedProcedureStep)
            self.message_id = last_id(session, Hl7Message)
            self.audit_id = last_id(session, AuditEvent)

    def steps(self) -> list[PerformedProcedureStep]:
        with Session(self.engine) as session:
            query = (
                select(PerformedProcedureStep)
                .where(col(PerformedProcedureStep.id) > self.step_id)
                .order_by(col(PerformedProcedureStep.id))
            )
            return list(session.exec(query).all())

    def filed(self) -> list[Received]:
        return [m for m in self.his.filed() if m.control_id not in self.filed_before]

    def wait_filed(self, count: int, timeout: float = 20.0) -> list[Received]:
        """As HisSimulator.wait_for: until `count` messages are filed; all those filed then."""
        wait_for(
            lambda: len(self.filed()) >= count, timeout=timeout, what=f"{count} messages filed"
        )
        return self.filed()

    def audit(self, action: str) -> list[AuditEvent]:
        return [e for e in audit_events(self.engine, action) if (e.id or 0) > self.audit_id]


def last_id(session: Session, table: Any) -> int:
    return session.exec(select(func.max(table.id))).one() or 0


@pytest.fixture
def since(app: FastAPI, client: TestClient, his: HisSimulator) -> Since:
    return Since(app, his)


@pytest.fixture
def own_his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def own_settings(database_url: str, tmp_path: Path, own_his: HisSimulator) -> Settings:
    """A database and a HIS of the test's own."""
    return app_settings(database_url, tmp_path, **mpps_settings(own_his))


def new_order(client: TestClient, headers: Headers, **changes: Any) -> dict[str, Any]:
    """A SCHEDULED order on the worklist."""
    n = next(_numbers)
    body: dict[str, Any] = {
        "patientId": "PAT-0001",
        "issuerOfPatientId": "HOSP",
        "patientName": "DOE^JANE",
        "patientBirthDate": "1970-01-01",
        "patientSex": "F",
        "modality": "DX",
        "procedureCode": "71020",
        "procedureDescription": "Chest PA and lateral",
        "placerOrderNumber": f"PL-{n}",
        "scheduledAt": "2026-11-30T10:00:00+01:00",
        "scheduledStationAet": "DX01",
        **changes,
    }
    created = client.post("/api/imaging-orders", json=body, headers=headers)
    assert created.status_code == 201, created.text
    order: dict[str, Any] = created.json()
    assert order["status"] == "SCHEDULED"
    return order


def for_order(order: dict[str, Any], **changes: Any) -> Dataset:
    values: dict[str, Any] = {
        "study_instance_uid": order["studyInstanceUID"],
        "accession_number": order["accessionNumber"],
        "requested_procedure_id": order["requestedProcedureId"],
        "scheduled_step_id": order["accessionNumber"],
        "patient_id": order["patientId"],
        **changes,
    }
    return in_progress(**values)


def order_now(client: TestClient, headers: Headers, order_id: int) -> dict[str, Any]:
    answer = client.get(f"/api/imaging-orders/{order_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def orc5(received: Received) -> str:
    assert "|ORM^O01^ORM_O01|" in received.raw, received.raw
    (orc,) = [s.split("|") for s in received.raw.split("\r") if s.startswith("ORC|")]
    assert orc[1] == "SC"
    return orc[5]


def on_worklist(settings: Settings, order: dict[str, Any]) -> bool:
    """The order's item is in the worklist directory (its file is named by the order id)."""
    assert settings.worklist_dir is not None
    return (settings.worklist_dir / f"{order['id']}.wl").is_file()


# --- the workflow -------------------------------------------------------------------------------


def test_in_progress_starts_the_order_and_tells_the_his_ip(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    settings: Settings,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    wait_for(lambda: on_worklist(settings, order), timeout=10, what="worklist item")

    answer, uid = dx01.create(for_order(order))

    assert answer.status == 0x0000, answer
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    wait_for(lambda: not on_worklist(settings, order), timeout=10, what="item off the worklist")
    (update,) = since.wait_filed(1)
    assert orc5(update) == "IP"
    segments = {s[:3]: s.split("|") for s in update.raw.split("\r") if s}
    assert segments["MSH"][4:6] == ["HIS", "GENERAL"]
    assert segments["PID"][3] == "PAT-0001^^^HOSP^MR"
    assert segments["ORC"][2] == order["placerOrderNumber"]
    assert segments["OBR"][18] == order["accessionNumber"]
    (step,) = since.steps()
    assert (step.sop_instance_uid, step.order_id, step.status) == (uid, order["id"], "IN_PROGRESS")
    assert step.calling_ae_title == "DX01" and step.performed_station_ae_title == "DX01"
    assert step.started_at is not None and step.started_at.isoformat() == (
        "2026-11-30T09:15:00+00:00"  # 10:15 in Brussels
    )
    listed = client.get(
        "/api/performed-procedure-steps", params={"orderId": order["id"]}, headers=admin_headers
    ).json()
    assert [(s["sopInstanceUID"], s["status"], s["unscheduled"]) for s in listed["items"]] == [
        (uid, "IN_PROGRESS", False)
    ]
    assert [e.action for e in since.audit("performed_step.started")] == ["performed_step.started"]


def test_completed_records_the_series_and_a_second_n_set_is_refused(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))
    done = completed(series=[("1.2.3.4.1", ["1.2.3.4.1.1", "1.2.3.4.1.2"]), ("1.2.3.4.2", ["9.9"])])

    assert dx01.set(uid, done).status == 0x0000
    (step,) = since.steps()
    assert (step.status, step.series_count, step.instance_count) == ("COMPLETED", 2, 3)
    assert step.ended_at is not None

    again = dx01.set(uid, discontinued())
    assert again.status == 0x0110
    assert again.comment == "Performed Procedure Step Object may no longer be updated"
    (unchanged,) = since.steps()
    assert unchanged.status == "COMPLETED" and unchanged.discontinuation_reason is None
    # Completed is not the end of the order: it ends with its final report.
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    assert [orc5(m) for m in since.wait_filed(1)] == ["IP"]
    assert dx01.echo() == 0x0000, "the association is still up after the refusal"


def test_discontinued_before_any_image_puts_the_order_back_on_the_worklist(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    settings: Settings,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))
    wait_for(lambda: not on_worklist(settings, order), timeout=10, what="item off the worklist")

    assert dx01.set(uid, discontinued()).status == 0x0000

    assert order_now(client, admin_headers, order["id"])["status"] == "SCHEDULED"
    wait_for(lambda: on_worklist(settings, order), timeout=10, what="item back")
    (step,) = since.steps()
    assert step.status == "DISCONTINUED"
    assert (step.discontinuation_reason_code, step.discontinuation_reason) == (
        "110514",
        "Incorrect worklist entry selected",
    )
    assert [orc5(m) for m in since.wait_filed(2)] == ["IP", "DC"]
    # The exam done again later starts the order (and tells the HIS) again.
    answer, _ = dx01.create(for_order(order))
    assert answer.status == 0x0000
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    assert [orc5(m) for m in since.wait_filed(3)] == ["IP", "DC", "IP"]


def test_discontinued_after_images_arrived_keeps_the_order_in_progress(
    app: FastAPI,
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    # A short Study Instance UID: the test's study builder appends series numbers to it.
    order = new_order(client, admin_headers, studyInstanceUID=f"{UID_ROOT}.66.1")
    _, uid = dx01.create(for_order(order))
    study = orthanc_study(
        order["studyInstanceUID"],
        accession_number=order["accessionNumber"],
        patient_id="PAT-0001",
    )
    study_id = seed_study(engine_of(app), study)
    linked = client.post(
        f"/api/studies/{study_id}/link-order", json={"orderId": order["id"]}, headers=admin_headers
    )
    assert linked.status_code == 200, linked.text

    assert dx01.set(uid, discontinued()).status == 0x0000

    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    assert since.steps()[0].status == "DISCONTINUED"
    # Only the start was told: the images are there to be read.
    assert [orc5(m) for m in since.wait_filed(1)] == ["IP"]
    assert len(since.filed()) == 1


def test_discontinued_with_images_referenced_keeps_the_order_in_progress(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    # Equipment failure after three images: they are on their way to the archive, the exam is
    # partly done, and the worklist must not offer it again.
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))
    stopped = discontinued(
        reason=("110501", "Equipment failure"), series=[("1.2.3.9", ["1.2.3.9.1", "1.2.3.9.2"])]
    )

    assert dx01.set(uid, stopped).status == 0x0000

    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    assert [orc5(m) for m in since.wait_filed(1)] == ["IP"]


def test_the_api_cannot_send_a_started_order_back_to_the_worklist(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
) -> None:
    order = new_order(client, admin_headers)
    dx01.create(for_order(order))

    for status in ("SCHEDULED", "PENDING"):
        back = client.patch(
            f"/api/imaging-orders/{order['id']}", json={"status": status}, headers=admin_headers
        )
        assert back.status_code == 409, back.text
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"


def test_two_modalities_starting_one_order_at_once_start_it_once(
    app: FastAPI,
    client: TestClient,
    admin_headers: Headers,
    scp_port: int,
    since: Since,
) -> None:
    orders = [new_order(client, admin_headers) for _ in range(5)]
    answers: list[int] = []

    def perform(station: str, order: dict[str, Any], ready: threading.Barrier) -> None:
        with modality(scp_port, calling=station) as scanner:
            ready.wait()
            answer, _ = scanner.create(for_order(order, station=station))
            answers.append(answer.status)

    for order in orders:
        ready = threading.Barrier(2)
        racing = [
            threading.Thread(target=perform, args=(station, order, ready))
            for station in ("DX01", "DX02")
        ]
        for thread in racing:
            thread.start()
        for thread in racing:
            thread.join(30)

    assert answers == [0x0000] * 10
    assert all(order_now(client, admin_headers, o["id"])["status"] == "IN_PROGRESS" for o in orders)
    # Each order started once: one IP each, and one status change in the audit trail.
    assert sorted(orc5(m) for m in since.wait_filed(5)) == ["IP"] * 5
    with Session(engine_of(app)) as session:
        queued = session.exec(
            select(Hl7Message.order_id).where(
                Hl7Message.order_status == "IP", col(Hl7Message.id) > since.message_id
            )
        )
        assert sorted(i or 0 for i in queued.all()) == sorted(o["id"] for o in orders)
    started = [
        e for e in since.audit("order.status_changed") if e.detail.get("status") == "IN_PROGRESS"
    ]
    assert sorted(int(e.entity_id) for e in started) == sorted(o["id"] for o in orders)
    assert len(since.steps()) == 10


def test_one_uid_created_twice_at_once_is_stored_once(
    client: TestClient,
    admin_headers: Headers,
    scp_port: int,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    uid = f"{UID_ROOT}.88.1"
    answers: list[int] = []
    ready = threading.Barrier(2)

    def perform(station: str) -> None:
        with modality(scp_port, calling=station) as scanner:
            ready.wait()
            answer, _ = scanner.create(for_order(order, station=station), uid=uid)
            answers.append(answer.status)

    racing = [threading.Thread(target=perform, args=(s,)) for s in ("DX01", "DX02")]
    for thread in racing:
        thread.start()
    for thread in racing:
        thread.join(30)

    assert sorted(answers) == [0x0000, 0x0111]
    assert [s.sop_instance_uid for s in since.steps()] == [uid]


def test_an_exam_on_an_order_that_is_over_is_kept_for_reconciliation(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    assert client.delete(f"/api/imaging-orders/{order['id']}", headers=admin_headers).is_success

    answer, _ = dx01.create(for_order(order))

    assert answer.status == 0x0000
    (step,) = since.steps()
    assert (step.order_id, step.order_match_issue) == (None, "the order is CANCELLED")
    assert order_now(client, admin_headers, order["id"])["status"] == "CANCELLED"


def test_the_end_and_the_series_may_come_in_earlier_n_sets(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))
    series_first = completed(series=[("1.2.3.7", ["1.2.3.7.1"])])
    for keyword in (STATUS, END_DATE, END_TIME):
        delattr(series_first, keyword)
    assert dx01.set(uid, series_first).status == 0x0000
    end_next = completed(series=[])
    del end_next.PerformedSeriesSequence
    del end_next.PerformedProcedureStepStatus
    assert dx01.set(uid, end_next).status == 0x0000
    status_alone = Dataset()
    status_alone.PerformedProcedureStepStatus = "COMPLETED"

    assert dx01.set(uid, status_alone).status == 0x0000

    (step,) = since.steps()
    assert (step.status, step.series_count, step.instance_count) == ("COMPLETED", 1, 1)
    assert step.ended_at is not None


def test_a_step_for_no_known_order_is_kept_for_reconciliation(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    unscheduled_before = client.get("/health").json()["mpps"]["unscheduledSteps"]
    unknown = in_progress(study_instance_uid=f"{UID_ROOT}.55.1", accession_number="NOPE-1")
    answer, uid = dx01.create(unknown)
    assert answer.status == 0x0000

    listed = client.get(
        "/api/performed-procedure-steps", params={"unscheduled": "true"}, headers=admin_headers
    ).json()
    new = [s for s in listed["items"] if s["id"] > since.step_id]
    assert [(s["sopInstanceUID"], s["orderId"]) for s in new] == [(uid, None)]
    assert "no order" in new[0]["orderMatchIssue"]
    # The step goes on as any other; the HIS has nothing to hear of it.
    assert dx01.set(uid, discontinued()).status == 0x0000
    assert since.filed() == []
    mpps = client.get("/health").json()["mpps"]
    assert mpps["listening"] is True and mpps["aet"] == "ORTHANC"
    assert mpps["unscheduledSteps"] == unscheduled_before + 1


def test_a_step_naming_another_patient_links_nothing(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    answer, _ = dx01.create(for_order(order, patient_id="SOMEONE-ELSE"))
    assert answer.status == 0x0000
    (step,) = since.steps()
    assert step.order_id is None and step.order_match_issue == "patient id differs from the order's"
    assert order_now(client, admin_headers, order["id"])["status"] == "SCHEDULED"


def test_a_step_under_a_merged_away_patient_id_starts_the_surviving_patients_order(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    # The modality read its worklist before the HIS merged the trauma record into the real one.
    order = new_order(client, admin_headers, patientId="TRAUMA-7", issuerOfPatientId="HOSP")
    survivor = new_order(client, admin_headers, patientId="REAL-7", issuerOfPatientId="HOSP")
    prior_id, surviving_id = order["patientRecordId"], survivor["patientRecordId"]
    merged = client.post(
        f"/api/patients/{prior_id}/merge",
        json={"survivingPatientId": surviving_id},
        headers=admin_headers,
    )
    assert merged.status_code == 200, merged.text

    answer, _ = dx01.create(for_order(order, patient_id="TRAUMA-7"))

    assert answer.status == 0x0000
    (step,) = since.steps()
    assert (step.order_id, step.order_match_issue) == (order["id"], None)
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"
    # Another patient's id still links nothing.
    other = new_order(client, admin_headers, patientId="SOMEONE-8", issuerOfPatientId="HOSP")
    dx01.create(for_order(other, patient_id="REAL-7"))
    assert order_now(client, admin_headers, other["id"])["status"] == "SCHEDULED"


def test_the_scp_gives_the_step_a_uid_when_the_modality_gives_none(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    answer = dx01.create_without_uid(for_order(order))
    assert answer.status == 0x0000
    (step,) = since.steps()
    assert step.sop_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom's root


# --- what is refused, and with which status -----------------------------------------------------


def without(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def emptied(ds: Dataset, keyword: str) -> Dataset:
    setattr(ds, keyword, "")
    return ds


def drop(keyword: str, *, item: bool = False) -> Any:
    """Leaves the attribute out (of the first scheduled step item when `item`)."""
    return lambda ds: without(ds.ScheduledStepAttributesSequence[0] if item else ds, keyword)


def put(keyword: str, value: Any, *, item: bool = False) -> Any:
    """Sets the attribute to `value` (in the first scheduled step item when `item`)."""
    return lambda ds: setattr(ds.ScheduledStepAttributesSequence[0] if item else ds, keyword, value)


STATUS = "PerformedProcedureStepStatus"
START_DATE, START_TIME = "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"
SCHEDULED = "ScheduledStepAttributesSequence"
MISSING, NO_VALUE, INVALID = 0x0120, 0x0121, 0x0106


@pytest.mark.parametrize(
    ("spoil", "status", "keyword"),
    [
        (drop(SCHEDULED), MISSING, SCHEDULED),
        (drop(STATUS), MISSING, STATUS),
        (drop(START_DATE), MISSING, START_DATE),
        (put("Modality", ""), NO_VALUE, "Modality"),
        (put("PerformedStationAETitle", ""), NO_VALUE, "PerformedStationAETitle"),
        (put("PerformedProcedureStepID", ""), NO_VALUE, "PerformedProcedureStepID"),
        (put(STATUS, "COMPLETED"), INVALID, STATUS),
        (put(STATUS, "STARTED"), INVALID, STATUS),
        (put(START_DATE, "20261399"), INVALID, START_DATE),
        (put(START_TIME, "25"), INVALID, START_TIME),
        (put(START_DATE, "18991231"), INVALID, START_DATE),
        (put(SCHEDULED, Sequence()), NO_VALUE, SCHEDULED),
        (put("StudyInstanceUID", "1.02.x", item=True), INVALID, "StudyInstanceUID"),
        (drop("StudyInstanceUID", item=True), MISSING, "StudyInstanceUID"),
        (put("AccessionNumber", "A" * 17, item=True), INVALID, "AccessionNumber"),
        (put("PatientID", "P\x1b1"), INVALID, "PatientID"),
        (put("PatientID", ["P1", "P2"]), INVALID, "PatientID"),
    ],
)
def test_an_n_create_missing_or_spoiling_an_attribute_gets_its_status(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    spoil: Any,
    status: int,
    keyword: str,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    attributes = for_order(order)
    spoil(attributes)

    answer, _ = dx01.create(attributes)

    assert answer.status == status, answer
    assert keyword in (answer.comment or "")
    assert answer.attributes in ([], [tag_for_keyword(keyword)])
    assert since.steps() == []
    assert order_now(client, admin_headers, order["id"])["status"] == "SCHEDULED"
    assert dx01.echo() == 0x0000, "the association survives a refusal"


def test_an_mpps_uid_is_created_once_and_an_unknown_one_cannot_be_set(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))

    duplicate, _ = dx01.create(for_order(order), uid=uid)
    assert duplicate.status == 0x0111
    unknown = dx01.set("1.2.3.999", discontinued())
    assert unknown.status == 0x0112
    assert len(since.steps()) == 1 and since.steps()[0].status == "IN_PROGRESS"


END_DATE, END_TIME = "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"
SERIES = "PerformedSeriesSequence"


def one_series() -> Dataset:
    return completed(series=[("1.2.3", ["1.2.3.1"])])


@pytest.mark.parametrize(
    ("modifications", "status", "keyword"),
    [
        (without(one_series(), END_DATE), MISSING, END_DATE),
        (emptied(discontinued(), END_TIME), NO_VALUE, END_TIME),
        (completed(series=[]), NO_VALUE, SERIES),
        # The N-CREATE gave the (Type 2) sequence empty: still no series to complete with.
        (without(one_series(), SERIES), NO_VALUE, SERIES),
        (emptied(discontinued(), STATUS), 0x0000, None),  # no status: the step goes on
    ],
)
def test_an_n_set_that_ends_a_step_needs_its_end_and_its_series(
    client: TestClient,
    admin_headers: Headers,
    dx01: Modality,
    modifications: Dataset,
    status: int,
    keyword: str | None,
    since: Since,
) -> None:
    order = new_order(client, admin_headers)
    _, uid = dx01.create(for_order(order))

    answer = dx01.set(uid, modifications)

    assert answer.status == status, answer
    if keyword:
        assert keyword in (answer.comment or "")
    (step,) = since.steps()
    assert step.status == "IN_PROGRESS"
    assert order_now(client, admin_headers, order["id"])["status"] == "IN_PROGRESS"


def test_status_updates_wait_for_the_his_and_arrive_once_in_order(
    own_settings: Settings, own_his: HisSimulator
) -> None:
    """On an app and a HIS of its own: it takes the HIS down."""
    his, app = own_his, create_app(own_settings)
    with TestClient(app) as client, modality(scp_port_of(app)) as dx01:
        admin_headers = login(client, "admin", ADMIN_PASSWORD)
        his.stop()
        first, second = new_order(client, admin_headers), new_order(client, admin_headers)
        _, one = dx01.create(for_order(first))
        dx01.create(for_order(second))
        assert dx01.set(one, discontinued()).status == 0x0000
        cancelled = client.delete(f"/api/imaging-orders/{second['id']}", headers=admin_headers)
        assert cancelled.status_code == 200, cancelled.text
        outbox = service_of(app, ResultOutbox)
        wait_for(lambda: outbox.last_error, timeout=10, what="the outbox finding the HIS down")

        his.start()

        filed = his.wait_for(4)
    by_order = {
        accession: [orc5(m) for m in filed if f"|{accession}|" in m.raw]
        for accession in (first["accessionNumber"], second["accessionNumber"])
    }
    assert by_order == {
        first["accessionNumber"]: ["IP", "DC"],
        second["accessionNumber"]: ["IP", "CA"],
    }
    assert len({m.control_id for m in his.received}) == 4, "each update filed once"


def test_no_status_updates_when_switched_off(own_settings: Settings, own_his: HisSimulator) -> None:
    his = own_his
    quiet = create_app(own_settings.model_copy(update={"his_status_updates": False}))
    with TestClient(quiet) as quiet_client:
        headers = login(quiet_client, "admin", ADMIN_PASSWORD)
        order = new_order(quiet_client, headers)
        port = service_of(quiet, MppsListener).port
        assert port is not None
        with modality(port) as scanner:
            answer, _ = scanner.create(for_order(order))
        assert answer.status == 0x0000
        assert order_now(quiet_client, headers, order["id"])["status"] == "IN_PROGRESS"
    assert his.filed() == []


# --- who may report, who may read -------------------------------------------------------------


def test_only_registered_modalities_may_report_when_modalities_are_registered(
    own_settings: Settings,
) -> None:
    guarded = create_app(
        own_settings.model_copy(update={"dicom_modalities": "DX01@10.9.9.9:104,CT01@127.0.0.1:104"})
    )
    with TestClient(guarded):
        port = service_of(guarded, MppsListener).port
        assert port is not None
        with pytest.raises(ConnectionError), modality(port, calling="ROGUE"):
            pass
        with pytest.raises(ConnectionError), modality(port, called="NOT-OURS"):
            pass
        # DX01 is registered at another host; calling from this machine is accepted, as for
        # C-STORE (loopback is the machine itself).
        with modality(port, calling="DX01") as scanner:
            assert scanner.echo() == 0x0000
    assert audit_events(engine_of(guarded), "performed_step.started") == []


def test_steps_are_for_the_department_not_for_physicians(
    client: TestClient,
    admin_headers: Headers,
    headers_for: Any,
    technologist: Headers,
) -> None:
    assert client.get("/api/performed-procedure-steps", headers=technologist).status_code == 200
    physician = headers_for(Role.PHYSICIAN)
    assert client.get("/api/performed-procedure-steps", headers=physician).status_code == 403
    assert client.get("/api/performed-procedure-steps").status_code == 401
    assert (
        client.get("/api/performed-procedure-steps/999", headers=admin_headers).status_code == 404
    )
