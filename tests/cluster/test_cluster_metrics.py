"""GET /metrics on two nodes of one cluster (PostgreSQL): each node counts what it did itself
(HL7 messages it received), while a backlog read from the shared database (the reading
worklist) is the same figure on both, labelled scope="cluster": to be read from one node or
max()'d, never summed."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from cluster_nodes import ClusterNode, two_nodes
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from his_simulator import HisSimulator
from hl7_samples import ORM_NW_251, with_field
from metrics_scrape import Samples, moved, parse, value
from stack import wait_for
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def nodes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[tuple[ClusterNode, ClusterNode]]:
    his = HisSimulator().start()
    notifications = WebhookReceiver().start()
    try:
        with two_nodes(
            request,
            tmp_path_factory,
            database_template,
            label="cluster-metrics",
            lease_seconds=15,
            his_port=his.port,
            notification_url=notifications.url,
        ) as pair:
            yield pair
    finally:
        his.stop()
        notifications.stop()


def scrape(node: ClusterNode) -> Samples:
    response = httpx.get(f"{node.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def order(n: int) -> str:
    tag = uuid.uuid4().hex[:8].upper()
    message = with_field(ORM_NW_251, "MSH", 10, f"MSG-{tag}")
    message = with_field(message, "ORC", 2, f"PL{tag}^HIS")
    message = with_field(message, "OBR", 2, f"PL{tag}^HIS")
    message = with_field(message, "OBR", 18, f"AC{tag}")
    return with_field(message, "ZDS", 1, f"1.2.826.0.1.3680043.9.7.77.{n}.{int(tag, 16)}")


def test_each_node_counts_its_own_and_both_report_the_cluster_s_backlog(
    nodes: tuple[ClusterNode, ClusterNode], tmp_path: Path
) -> None:
    a, b = nodes
    before = {node.name: scrape(node) for node in nodes}
    assert value(before["node-a"], "sidecar_node_info", node="node-a") == 1
    assert value(before["node-b"], "sidecar_node_info", node="node-b") == 1

    for node, count in ((a, 1), (b, 2)):
        with MllpClient("127.0.0.1", node.mllp_port) as his:
            for n in range(count):
                assert parse_ack(his.send(order(n))).code == "AA"
    # A study without an order, sent to node A's Orthanc: ready to read, for the whole cluster.
    images = make_study(tmp_path / "dicom", series_count=1, instances_per_series=2)
    assert storescu_dcmtk(images.files, *a.dicom_address).all_success

    def waiting(node: ClusterNode) -> Samples | None:
        samples = scrape(node)
        labels = {"scope": "cluster", "priority": "ROUTINE"}
        grown = moved(before[node.name], samples, "sidecar_reading_worklist_waiting", **labels)
        return samples if grown == 1 else None

    after = {
        node.name: wait_for(functools.partial(waiting, node), timeout=60, what="ready to read")
        for node in nodes
    }

    received = "sidecar_hl7_messages_received_total"
    labels = {"message_type": "ORM^O01", "ack_code": "AA"}
    assert moved(before["node-a"], after["node-a"], received, **labels) == 1
    assert moved(before["node-b"], after["node-b"], received, **labels) == 2
    # Cluster-scoped series: the same figure from either node.
    for name in ("sidecar_reading_worklist_waiting", "sidecar_hl7_outbox_depth"):
        for node_samples in after.values():
            assert any(n == name for n, _ in node_samples)
    cluster_a = {key: v for key, v in after["node-a"].items() if ("scope", "cluster") in key[1]}
    cluster_b = {key: v for key, v in after["node-b"].items() if ("scope", "cluster") in key[1]}
    assert cluster_a.keys() == cluster_b.keys()
    # (Read at two moments: only a backlog nothing changes meanwhile is compared.)
    waiting_series = [k for k in cluster_a if k[0] == "sidecar_reading_worklist_waiting"]
    assert len(waiting_series) == 3  # STAT, URGENT, ROUTINE
    assert all(cluster_a[k] == cluster_b[k] for k in waiting_series)
