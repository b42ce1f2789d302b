"""Two nodes of one cluster on this machine, against the real parts: each node is what `make run`
starts (Orthanc with the plugin, the sidecar with its MLLP listener, the nginx front), both on one
PostgreSQL database, one PostgreSQL Orthanc index and one storage folder, each with its own ports
and DATA_DIR. A loopback HIS takes the results, a loopback notification service the critical
finding notifications.

The module shares one cluster (nodes are slow to start on two cores); each test works with its
own orders and studies. The order of the tests matters only at the end: a node is killed, and
started again, in the last cluster test. PostgreSQL only, but for the last test: with SQLite a
second node is refused.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from cluster_nodes import ClusterNode, two_nodes
from dicom_factory import GeneratedStudy, make_study
from dicom_senders import storescu_dcmtk
from findscu import find_dcmtk, findscu_keys
from his_simulator import HisSimulator, Received
from hl7_samples import ORM_NW_251, with_field
from stack import STACK_ADMIN_PASSWORD, wait_for
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.orthanc

#: Short, to keep the takeover quick; the sidecar accepts 3 s at least.
LEASE_SECONDS = 6.0
RETRY_MAX_DELAY = 2  # seconds: RESULT_RETRY_MAX_DELAY and NOTIFICATION_RETRY_MAX_DELAY
#: Within this after a node dies, the other has taken over and finished the dead node's items:
#: a dead holder's lease passes to another node within CLUSTER_LEASE_SECONDS (issue 16), which
#: then sends what waits, a notification the dead node had tried already once its retry delay is
#: over (RETRY_MAX_DELAY at most), the rest at once; 5 s for the sending on two shared cores.
TAKEOVER_BOUND = LEASE_SECONDS + RETRY_MAX_DELAY + 5.0
#: An order received by one node is on every node's worklist within "a second or two" (issue 16);
#: the margin is findscu's own start and this machine's two shared cores.
WORKLIST_BOUND = 5.0
ESCALATION_CONTACT = "DR-ONCALL"
RADIOLOGIST = ("dr-cluster", "cluster-radiologist-password")
RESULT_OUTBOX_JOB = "result-outbox"  # its name in /health's cluster.leases

_orders_made = itertools.count(1)


@dataclass
class Cluster:
    a: ClusterNode
    b: ClusterNode
    his: HisSimulator
    notifications: WebhookReceiver

    @property
    def nodes(self) -> tuple[ClusterNode, ClusterNode]:
        return (self.a, self.b)

    def other(self, node: ClusterNode) -> ClusterNode:
        return self.b if node is self.a else self.a


@dataclass(frozen=True)
class Order:
    accession: str
    placer: str
    study_uid: str
    patient_id: str


@dataclass
class Ordered:
    """An order whose images have arrived and are linked to it: ready to be reported."""

    order: Order
    order_id: int
    study_id: int


@dataclass
class Expected:
    """What the HIS and the notification service must get, and nothing more."""

    results: dict[str, list[str]] = field(default_factory=dict)  # accession -> kinds in order
    findings: dict[int, str] = field(default_factory=dict)  # finding id -> its one event


# --- the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[Cluster]:
    """Node A started, then node B (started one after the other: both would create Orthanc's
    index schema at once), on a database of their own and an Orthanc index of their own."""
    his = HisSimulator().start()
    notifications = WebhookReceiver().start()
    try:
        with two_nodes(
            request,
            tmp_path_factory,
            database_template,
            label="cluster",
            lease_seconds=LEASE_SECONDS,
            his_port=his.port,
            notification_url=notifications.url,
            # A held HIS or notification service keeps a node waiting, not retrying.
            HIS_MLLP_TIMEOUT="30",
            NOTIFICATION_TIMEOUT="30",
            RESULT_RETRY_MAX_DELAY=str(RETRY_MAX_DELAY),
            NOTIFICATION_RETRY_MAX_DELAY=str(RETRY_MAX_DELAY),
            CRITICAL_FINDING_ESCALATION_CONTACTS=ESCALATION_CONTACT,
        ) as (a, b):
            created = a.api(
                "POST",
                "/api/users",
                json={
                    "username": RADIOLOGIST[0],
                    "password": RADIOLOGIST[1],
                    "role": "radiologist",
                },
            )
            assert created.status_code == 201, created.text
            yield Cluster(a, b, his, notifications)
            # A test that failed while holding them: nothing waits on them at the end.
            his.release()
            notifications.release()
    finally:
        his.stop()
        notifications.stop()


@pytest.fixture(scope="module")
def unordered_studies(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[ClusterNode, GeneratedStudy]]:
    """Four studies without an order, two sent (C-STORE, dcmtk) to each node; by UID, with the
    node each was sent to."""
    directory = tmp_path_factory.mktemp("unordered")
    sent: dict[str, tuple[ClusterNode, GeneratedStudy]] = {}
    for number, node in enumerate((cluster.a, cluster.b, cluster.a, cluster.b)):
        study = make_study(directory / str(number), series_count=1, instances_per_series=2)
        assert storescu_dcmtk(study.files, *node.dicom_address).all_success
        sent[study.study_instance_uid] = (node, study)
    return sent


@pytest.fixture(scope="module")
def worklist_orders(cluster: Cluster) -> tuple[list[Order], float]:
    """Four ORM^O01 to node A over MLLP, acknowledged; and when the last ACK came."""
    orders = [new_order() for _ in range(4)]
    send_orders(cluster.a, orders)
    return orders, time.monotonic()


def new_order() -> Order:
    n = next(_orders_made)
    tag = uuid.uuid4().hex[:6].upper()
    return Order(
        accession=f"CL{tag}{n}",
        placer=f"PLC-CL-{tag}-{n}",
        study_uid=f"1.2.826.0.1.3680043.9.7.16.{int(tag, 16)}.{n}",
        patient_id=f"CLU-{tag}-{n}",
    )


def orm(order: Order) -> str:
    """ORM_NW_251 with this order's control id, placer order number, accession number, Study
    Instance UID and patient id."""
    message = with_field(ORM_NW_251, "MSH", 10, f"MSG-{order.placer}")
    message = with_field(message, "PID", 3, f"{order.patient_id}^^^GENHOSP^MR")
    message = with_field(message, "ORC", 2, f"{order.placer}^HIS")
    message = with_field(message, "OBR", 2, f"{order.placer}^HIS")
    message = with_field(message, "OBR", 18, order.accession)
    return with_field(message, "ZDS", 1, f"{order.study_uid}^HIS^Application^DICOM")


def send_orders(node: ClusterNode, orders: list[Order]) -> None:
    with MllpClient("127.0.0.1", node.mllp_port, timeout=15) as his:
        for order in orders:
            assert parse_ack(his.send(orm(order))).code == "AA"


def images_for(
    cluster: Cluster, orders: list[Order], senders: list[ClusterNode], directory: Path
) -> list[Ordered]:
    """The modality sends each order's images (its accession number, Study Instance UID and
    patient id) to the node given for it; returns each once it is registered and linked."""
    for order, node in zip(orders, senders, strict=True):
        images = make_study(
            directory / order.placer,
            accession_number=order.accession,
            patient_id=order.patient_id,
            study_instance_uid=order.study_uid,
            series_count=1,
            instances_per_series=1,
        )
        assert storescu_dcmtk(images.files, *node.dicom_address).all_success
    ordered = []
    for order in orders:

        def linked(order: Order = order) -> dict[str, Any] | None:
            rows = [s for s in cluster.a.studies() if s["studyInstanceUID"] == order.study_uid]
            assert len(rows) <= 1, f"study {order.study_uid} registered {len(rows)} times"
            return rows[0] if rows and rows[0]["orderId"] else None

        study = wait_for(linked, timeout=30, interval=0.3, what=f"study of {order.accession}")
        ordered.append(Ordered(order, study["orderId"], study["id"]))
    return ordered


# --- what the receivers got -------------------------------------------------------------------


def segment(raw: str, name: str) -> list[str]:
    found = [s.split("|") for s in raw.split("\r") if s.startswith(name + "|")]
    assert len(found) == 1, f"{len(found)} {name} segments"
    return found[0]


def accession_of(message: Received) -> str:
    """OBR-18, in results and in status updates alike."""
    return segment(message.raw, "OBR")[18]


def kind_of(message: Received) -> str:
    """ORU F/P/C (OBR-25) for a result, SC IP/CM/... (ORC-5) for an order status update."""
    if "|ORU^R01" in message.raw:
        return "ORU " + segment(message.raw, "OBR")[25]
    assert "|ORM^O01" in message.raw, message.raw[:80]
    return "SC " + segment(message.raw, "ORC")[5]


def messages_of(his: HisSimulator, accessions: set[str], since: int = 0) -> list[Received]:
    return [m for m in his.received[since:] if accession_of(m) in accessions]


def first_arrivals(messages: list[Received]) -> dict[str, list[str]]:
    """Per accession number, the kinds of its messages in the order they first arrived."""
    kinds: dict[str, list[str]] = {}
    seen: set[str] = set()
    for message in messages:
        if message.control_id in seen:
            continue
        seen.add(message.control_id)
        kinds.setdefault(accession_of(message), []).append(kind_of(message))
    return kinds


def one_control_id_each(messages: list[Received]) -> None:
    """No message was made twice: one MSH-10 per order and kind, and one content per MSH-10."""
    ids: dict[tuple[str, str], set[str]] = {}
    contents: dict[str, set[str]] = {}
    for message in messages:
        ids.setdefault((accession_of(message), kind_of(message)), set()).add(message.control_id)
        contents.setdefault(message.control_id, set()).add(message.raw)
    assert {key: len(found) for key, found in ids.items() if len(found) != 1} == {}
    assert {key: len(found) for key, found in contents.items() if len(found) != 1} == {}


def notifications_for(receiver: WebhookReceiver, findings: set[int]) -> list[dict[str, Any]]:
    return [body for body in receiver.delivered() if body.get("findingId") in findings]


def backlog_drained(node: ClusterNode) -> bool:
    """The node's /health shows no result and no notification waiting (cluster-wide backlogs)."""
    health = node.health()
    return bool(health["results"]["pending"] == 0 and health["notifications"]["pending"] == 0)


def lease_holders(node: ClusterNode) -> dict[str, str]:
    cluster = node.health().get("cluster")
    assert cluster is not None, "/health names no cluster"
    leases: dict[str, str] = cluster["leases"]
    return leases


def result_lease_holder(node: ClusterNode) -> str | None:
    return lease_holders(node).get(RESULT_OUTBOX_JOB)


def heartbeat_of(node: ClusterNode, name: str) -> datetime | None:
    cluster = node.health().get("cluster") or {}
    for seen in cluster.get("nodes", []):
        if seen["name"] == name and seen.get("lastHeartbeatAt"):
            return datetime.fromisoformat(seen["lastHeartbeatAt"].replace("Z", "+00:00"))
    return None


def report_and_sign(node: ClusterNode, study_id: int) -> None:
    radiologist = node.headers_of(*RADIOLOGIST)
    report = node.api(
        "POST",
        "/api/reports",
        json={"studyId": study_id, "findings": "No acute abnormality.", "impression": "Normal."},
        headers=radiologist,
    )
    assert report.status_code == 201, report.text
    signed = node.api("POST", f"/api/reports/{report.json()['id']}/sign", headers=radiologist)
    assert signed.status_code == 200, signed.text


def raise_finding(node: ClusterNode, study_id: int) -> int:
    answer = node.api(
        "POST",
        "/api/critical-findings",
        json={"studyId": study_id, "severity": "CRITICAL", "description": "Tension pneumothorax"},
        headers=node.headers_of(*RADIOLOGIST),
    )
    assert answer.status_code == 201, answer.text
    finding_id: int = answer.json()["id"]
    return finding_id


def study_id_of(node: ClusterNode, study_uid: str) -> int:
    """The study's id, once it is registered."""

    def registered() -> int | None:
        rows = rows_of(node, {study_uid})
        assert len(rows) <= 1, f"study registered {len(rows)} times"
        return int(rows[0]["id"]) if rows else None

    return wait_for(registered, timeout=30, interval=0.3, what="the study registered")


def escalations_audited(node: ClusterNode, finding_id: int) -> int:
    answer = node.api(
        "GET",
        "/api/audit",
        params={
            "action": "critical_finding.escalated",
            "entityType": "critical_finding",
            "entityId": str(finding_id),
            "limit": 100,
        },
    )
    assert answer.status_code == 200, answer.text
    return len(answer.json()["items"])


def check_notifications(cluster: Cluster, expected: Expected, *, audit: ClusterNode) -> None:
    """Every notification of these findings arrived once: one notificationId delivered once,
    and per finding exactly the one event expected (the ordering provider told of it; or, with
    no ordering provider, the escalation contact at once); each escalation audited once (read
    through `audit`'s API)."""
    delivered = notifications_for(cluster.notifications, set(expected.findings))
    repeats = {k: n for k, n in Counter(b["notificationId"] for b in delivered).items() if n > 1}
    assert repeats == {}, "notifications delivered more than once"
    events: dict[int, list[str]] = {}
    for body in delivered:
        events.setdefault(body["findingId"], []).append(body["event"])
    assert events == {finding: [event] for finding, event in expected.findings.items()}
    for body in delivered:
        if body["event"] == "critical_finding.escalated":
            assert body["recipient"]["id"] == ESCALATION_CONTACT
    for finding, event in expected.findings.items():
        if event == "critical_finding.escalated":
            assert escalations_audited(audit, finding) == 1, f"finding {finding}"


# --- the tests --------------------------------------------------------------------------------


def test_studies_sent_to_either_node_are_registered_once_and_either_front_finds_them_all(
    cluster: Cluster, unordered_studies: dict[str, tuple[ClusterNode, GeneratedStudy]]
) -> None:
    uids = set(unordered_studies)

    def registered_everywhere() -> bool:
        for node in cluster.nodes:
            rows = Counter(s["studyInstanceUID"] for s in node.studies())
            twice = {uid: n for uid, n in rows.items() if uid in uids and n > 1}
            assert twice == {}, f"registered more than once, seen through {node.name}"
            if not all(rows[uid] == 1 for uid in uids):
                return False
        return True

    wait_for(registered_everywhere, timeout=30, interval=0.3, what="every study registered")
    rows = {
        node.name: {s["studyInstanceUID"]: s for s in rows_of(node, uids)} for node in cluster.nodes
    }
    # One row each, the same seen through either node, with every image.
    assert {u: r["id"] for u, r in rows["node-a"].items()} == {
        u: r["id"] for u, r in rows["node-b"].items()
    }
    wait_for(
        lambda: all(r["instanceCount"] == 2 for r in rows_of(cluster.a, uids)),
        timeout=30,
        interval=0.3,
        what="every image counted",
    )

    # QIDO-RS through each node's nginx front, logged in as the viewer's login page does.
    for node in cluster.nodes:
        with httpx.Client(base_url=node.front, timeout=15) as browser:
            logged_in = browser.post(
                "/login", data={"username": "admin", "password": STACK_ADMIN_PASSWORD, "next": "/"}
            )
            assert logged_in.status_code == 303, logged_in.text
            answer = browser.get("/dicom-web/studies", params={"limit": "1000"})
            assert answer.status_code == 200, answer.text
            found = {study["0020000D"]["Value"][0] for study in answer.json()}
            assert uids <= found, f"QIDO through {node.name}'s front misses {uids - found}"


def rows_of(node: ClusterNode, uids: set[str]) -> list[dict[str, Any]]:
    return [s for s in node.studies() if s["studyInstanceUID"] in uids]


def test_orders_received_by_one_node_are_on_the_other_node_s_worklist(
    cluster: Cluster, worklist_orders: tuple[list[Order], float], tmp_path: Path
) -> None:
    orders, acknowledged_at = worklist_orders
    expected = sorted(o.accession for o in orders)
    attempts = itertools.count()

    def offered_by(node: ClusterNode) -> Callable[[], list[str] | None]:
        def offered() -> list[str] | None:
            found = []
            for order in orders:
                answers = find_dcmtk(
                    node.ports["ORTHANC_DICOM_PORT"],
                    findscu_keys({"AccessionNumber": order.accession}, {}),
                    tmp_path / f"{node.name}-{next(attempts)}",
                )
                found += [str(a.AccessionNumber) for a in answers]
            return found if sorted(found) == expected else None

        return offered

    # Node B never heard these orders: only the database, and the cluster, tell it.
    remaining = max(acknowledged_at + WORKLIST_BOUND - time.monotonic(), 0.5)
    wait_for(offered_by(cluster.b), timeout=remaining, interval=0.1, what="node B's worklist")
    wait_for(offered_by(cluster.a), timeout=WORKLIST_BOUND, interval=0.1, what="node A's worklist")


def test_results_and_findings_of_both_nodes_reach_the_his_and_the_service_exactly_once(
    cluster: Cluster,
    worklist_orders: tuple[list[Order], float],
    unordered_studies: dict[str, tuple[ClusterNode, GeneratedStudy]],
    tmp_path: Path,
) -> None:
    """Reports signed on node A and on node B while the HIS and the notification service answer
    slowly (held until every report is signed and every finding raised), so that both nodes have
    work queued at once. Each message reaches the HIS once (one MSH-10, delivered once), in order
    per order: the exam started (SC IP, at the first images), the result (ORU^R01 F), the order
    completed (SC CM). Critical findings raised on both nodes: each notification delivered once;
    a finding without an ordering provider is escalated to the contact at once, and once."""
    orders, _ = worklist_orders
    a, b = cluster.a, cluster.b
    ordered = images_for(cluster, orders, [a, a, b, b], tmp_path)
    accessions = {o.accession for o in orders}
    exams_started(cluster, accessions)

    since = len(cluster.his.received)
    cluster.his.hold()
    cluster.notifications.hold()
    try:
        for item, node in zip(ordered, (a, b, a, b), strict=True):
            report_and_sign(node, item.study_id)
        unordered = [study_id_of(a, uid) for uid in list(unordered_studies)[:2]]
        expected = Expected(
            results={o.accession: ["SC IP", "ORU F", "SC CM"] for o in orders},
            findings={
                raise_finding(a, ordered[0].study_id): "critical_finding.raised",
                raise_finding(b, ordered[1].study_id): "critical_finding.raised",
                raise_finding(a, unordered[0]): "critical_finding.escalated",
                raise_finding(b, unordered[1]): "critical_finding.escalated",
            },
        )
        cluster.his.wait_received(since + 1, timeout=15)
    finally:
        cluster.his.release()
        cluster.notifications.release()

    def all_arrived() -> bool:
        arrived = first_arrivals(messages_of(cluster.his, accessions))
        notified = notifications_for(cluster.notifications, set(expected.findings))
        return arrived == expected.results and len(notified) >= len(expected.findings)

    wait_for(all_arrived, timeout=45, interval=0.2, what="every result and notification")
    # Nothing more waits anywhere, so nothing more can come.
    wait_for(lambda: all(backlog_drained(n) for n in cluster.nodes), timeout=30, interval=0.3)

    messages = messages_of(cluster.his, accessions)
    assert first_arrivals(messages) == expected.results
    one_control_id_each(messages)
    repeats = {k: n for k, n in Counter(m.control_id for m in messages).items() if n > 1}
    assert repeats == {}, "the HIS got these MSH-10 more than once"
    check_notifications(cluster, expected, audit=b)


def exams_started(cluster: Cluster, accessions: set[str]) -> None:
    """Until the HIS has filed each order's SC IP (sent at its first images) and nothing waits:
    only what follows is at stake."""
    wait_for(
        lambda: (
            first_arrivals(messages_of(cluster.his, accessions))
            == {accession: ["SC IP"] for accession in accessions}
        ),
        timeout=30,
        interval=0.2,
        what="the exams' start filed",
    )
    wait_for(lambda: all(backlog_drained(n) for n in cluster.nodes), timeout=30, interval=0.3)


def test_a_killed_node_s_work_is_finished_by_the_other_and_it_rejoins_when_restarted(
    cluster: Cluster,
    unordered_studies: dict[str, tuple[ClusterNode, GeneratedStudy]],
    tmp_path: Path,
) -> None:
    """The node holding the results outbox's lease is killed (SIGKILL) while results and
    notifications wait: the HIS holds its answers (the node is waiting for an acknowledgement
    when it dies) and the notification service is down, and a study has just arrived at it. The
    other node finishes every item within TAKEOVER_BOUND of the kill: every result and status
    update filed by the HIS, every notification and escalation delivered, the study the dead
    node received and one sent to the survivor after the kill registered once; nothing lost.
    Nothing is delivered twice but, possibly, the one message the dead node was sending at that
    instant (the HIS had it, its acknowledgement never reached the node): sent again by the
    survivor under the same MSH-10, which the HIS recognises. Every job the dead node ran, the
    survivor runs. Restarted, the dead node appears again among /health's nodes."""
    a, b = cluster.a, cluster.b
    orders = [new_order() for _ in range(4)]
    send_orders(b, orders)
    ordered = images_for(cluster, orders, [a, b, a, b], tmp_path)
    accessions = {o.accession for o in orders}
    exams_started(cluster, accessions)

    holder = result_lease_holder(a)
    assert holder in ("node-a", "node-b"), f"no node holds the results outbox: {holder}"
    victim = a if holder == "node-a" else b
    survivor = cluster.other(victim)
    assert result_lease_holder(survivor) == victim.name  # both nodes read the same lease
    victim_jobs = {job for job, node in lease_holders(survivor).items() if node == victim.name}

    since = len(cluster.his.received)
    cluster.his.hold()
    cluster.notifications.stop()
    unordered = [study_id_of(a, uid) for uid in list(unordered_studies)[2:]]
    for item, node in zip(ordered, (victim, victim, survivor, survivor), strict=True):
        report_and_sign(node, item.study_id)
    expected = Expected(
        results={o.accession: ["SC IP", "ORU F", "SC CM"] for o in orders},
        findings={
            raise_finding(victim, ordered[0].study_id): "critical_finding.raised",
            raise_finding(survivor, ordered[2].study_id): "critical_finding.raised",
            raise_finding(victim, unordered[0]): "critical_finding.escalated",
            raise_finding(survivor, unordered[1]): "critical_finding.escalated",
        },
    )
    # The lease holder sends the first result and waits for the HIS's answer.
    cluster.his.wait_received(since + 1, timeout=TAKEOVER_BOUND)
    # A study arrives at the dead node just before it dies (its StableStudy may never fire,
    # then only Orthanc's change log tells), another at the survivor just after.
    stored_before = make_study(tmp_path / "before-kill", series_count=1, instances_per_series=2)
    assert storescu_dcmtk(stored_before.files, *victim.dicom_address).all_success

    victim.kill()
    killed_at = time.monotonic()
    stored_after = make_study(tmp_path / "after-kill", series_count=1, instances_per_series=2)
    assert storescu_dcmtk(stored_after.files, *survivor.dicom_address).all_success
    stored = {stored_before.study_instance_uid, stored_after.study_instance_uid}
    in_flight = {m.control_id for m in cluster.his.received[since:]}
    assert len(in_flight) == 1, f"{len(in_flight)} messages in flight at once: one sender only"
    cluster.his.release()
    cluster.notifications.start()

    def finished() -> bool:
        arrived = first_arrivals(messages_of(cluster.his, accessions))
        notified = notifications_for(cluster.notifications, set(expected.findings))
        registered = Counter(s["studyInstanceUID"] for s in rows_of(survivor, stored))
        assert all(n == 1 for n in registered.values()), f"registered twice: {registered}"
        return (
            arrived == expected.results
            and len(notified) >= len(expected.findings)
            and all(r["instanceCount"] == 2 for r in rows_of(survivor, stored))
            and set(registered) == stored
            and backlog_drained(survivor)
        )

    remaining = killed_at + TAKEOVER_BOUND - time.monotonic()
    wait_for(finished, timeout=remaining, interval=0.2, what="the survivor finished")

    messages = messages_of(cluster.his, accessions)
    assert first_arrivals(messages) == expected.results
    one_control_id_each(messages)
    deliveries = Counter(m.control_id for m in messages_of(cluster.his, accessions, since))
    repeated = {control_id: n for control_id, n in deliveries.items() if n > 1}
    assert set(repeated) <= in_flight, "delivered twice, and not the message in flight"
    assert all(n == 2 for n in repeated.values()), repeated
    check_notifications(cluster, expected, audit=survivor)
    # Every job the dead node ran, the survivor runs now.
    taken_over = {job: lease_holders(survivor).get(job) for job in victim_jobs}
    assert taken_over == dict.fromkeys(victim_jobs, survivor.name)

    restarted_at = datetime.now().astimezone()
    victim.restart()

    def rejoined() -> bool:
        seen = heartbeat_of(survivor, victim.name)
        return seen is not None and seen >= restarted_at

    wait_for(rejoined, timeout=2 * LEASE_SECONDS, interval=0.3, what="the restarted node seen")
    assert heartbeat_of(victim, survivor.name) is not None


# --- SQLite: one node only ----------------------------------------------------------------------


def test_a_second_node_on_one_sqlite_database_is_refused_at_start(tmp_path: Path) -> None:
    """Nodes on SQLite cannot share work safely: the second node's sidecar exits, saying why,
    and the first runs on."""
    database = tmp_path / "node-1" / "var" / "sidecar.db"
    shared = {
        "DATABASE_URL": f"sqlite:///{database}",
        "JWT_SECRET": "sqlite-cluster-jwt-secret-" + "s" * 40,
        "SIDECAR_PLUGIN_TOKEN": "sqlite-cluster-plugin-token-" + "t" * 30,
        "ADMIN_PASSWORD": STACK_ADMIN_PASSWORD,
        "STABLE_AGE": "1",
        "CLUSTER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    first = ClusterNode.on_free_ports("node-1", tmp_path / "node-1", shared)
    second = ClusterNode.on_free_ports("node-2", tmp_path / "node-2", shared)
    try:
        first.start().wait_ready()
        second.start()

        def ended() -> int | None:
            assert second.process is not None
            code = second.process.poll()
            if code is None:
                try:
                    up = httpx.get(f"{second.url}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    up = False
                assert not up, f"the second node runs on the first's SQLite:\n{second.output()}"
            return None if code is None else code + 1000  # truthy, exit code 0 included

        code = wait_for(ended, timeout=60, interval=0.2, what="the second node's exit") - 1000
        assert code != 0, second.output()
        assert "SQLite" in second.output()
        assert "Traceback" not in second.output(), "a refusal is a message, not a crash"
        assert first.running()
        assert httpx.get(f"{first.url}/health", timeout=10).status_code == 200
    finally:
        second.stop()
        first.stop()
