"""The event stream of a node as `make run` starts it (`python -m sidecar.launcher`: Orthanc with
the plugin, the sidecar with its MLLP listener, the nginx front), against the real parts: a study
sent by C-STORE and an order sent over MLLP are announced through the nginx front while its
response is open (no buffering there), and a client reconnecting with Last-Event-ID after the
sidecar was killed (SIGKILL) and started again gets every event it missed.

One node for the module (slow to start on two cores); the kill comes last."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from cluster_nodes import ClusterNode, one_node
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from event_helpers import event_rows
from hl7_samples import ORM_NW_251, with_field
from sse_reader import SseEvent, SseReader

pytestmark = pytest.mark.orthanc

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def node(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[ClusterNode]:
    with one_node(request, tmp_path_factory, database_template, label="events-node") as started:
        yield started


def _engine_rows(node: ClusterNode, after: int) -> list[tuple[int, str, str, int]]:
    from sqlalchemy import create_engine

    engine = create_engine(node.env["DATABASE_URL"])
    try:
        return [(r.id or 0, r.kind, r.action, r.entity_id) for r in event_rows(engine, after)]
    finally:
        engine.dispose()


def _send_order(node: ClusterNode) -> str:
    n = f"{uuid.uuid4().hex[:6]}{next(_numbers)}"
    message = with_field(ORM_NW_251, "MSH", 10, f"MSG-EV-{n}")
    message = with_field(message, "PID", 3, f"EVPAT-{n}^^^GENHOSP^MR")
    message = with_field(message, "ORC", 2, f"PL-EV-{n}^HIS")
    message = with_field(message, "OBR", 2, f"PL-EV-{n}^HIS")
    message = with_field(message, "OBR", 18, f"ACC-EV-{n}")
    uid = f"1.2.826.0.1.3680043.9.7.77.{int(n, 16)}"
    message = with_field(message, "ZDS", 1, f"{uid}^HIS^Application^DICOM")
    with MllpClient("127.0.0.1", node.mllp_port, timeout=15) as his:
        ack = his.send(message)
    assert parse_ack(ack).code == "AA", ack
    return f"ACC-EV-{n}"


def _order_id(node: ClusterNode, accession: str) -> int:
    answer = node.api("GET", "/api/imaging-orders", params={"accessionNumber": accession})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    assert len(items) == 1, items
    return int(items[0]["id"])


def _kind(kind: str, action: str, entity_id: int | None = None) -> Any:
    def match(event: SseEvent) -> bool:
        data = event.json
        return (
            event.event == kind
            and data["action"] == action
            and (entity_id is None or data["id"] == entity_id)
        )

    return match


def test_changes_arrive_through_the_nginx_front_while_the_stream_is_open(
    node: ClusterNode, tmp_path: Path
) -> None:
    cookie = {"Cookie": f"viewer_session={node.login()}"}
    reader = SseReader.open(f"{node.front}/api/events", cookie)
    assert reader.status == 200, reader.body()
    assert reader.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in reader.headers
    reader.wait_ready()
    # An order over MLLP (the HL7 intake's own path, without the ORM).
    order_id = _order_id(node, _send_order(node))
    reader.until(_kind("order", "created", order_id), timeout=10)
    # A study by C-STORE, registered by the ingest path (plugin, /changes).
    study = make_study(tmp_path / "sent", series_count=1, instances_per_series=2)
    assert storescu_dcmtk(study.files, *node.dicom_address).all_success
    created = reader.until(_kind("study", "created"), timeout=30)[-1]
    registered = [s for s in node.studies() if s["studyInstanceUID"] == study.study_instance_uid]
    assert [s["id"] for s in registered] == [created.json["id"]]
    assert created.json["studyId"] == created.json["id"]
    reader.close()


def test_a_client_resumes_after_the_sidecar_is_killed_and_started_again(
    node: ClusterNode,
) -> None:
    headers = {"Authorization": f"Bearer {node.login()}"}
    reader = SseReader.open(f"{node.url}/api/events", headers).wait_ready()
    first = _order_id(node, _send_order(node))
    last_seen = int(reader.until(_kind("order", "created", first))[-1].id or 0)
    node.kill()
    reader.close()
    node.start().wait_ready()
    made = [_order_id(node, _send_order(node)) for _ in range(3)]
    changed = node.api(
        "PATCH", f"/api/imaging-orders/{made[0]}", json={"clinicalIndication": "after restart"}
    )
    assert changed.status_code == 200, changed.text
    expected = _engine_rows(node, last_seen)
    assert [(kind, action, entity) for _, kind, action, entity in expected][-4:] == [
        ("order", "created", made[0]),
        ("order", "created", made[1]),
        ("order", "created", made[2]),
        ("order", "changed", made[0]),
    ]
    headers = {"Authorization": f"Bearer {node.login()}", "Last-Event-ID": str(last_seen)}
    resumed = SseReader.open(f"{node.front}/api/events", headers).wait_ready()
    got = [resumed.next() for _ in expected]
    assert [int(event.id or 0) for event in got] == [row[0] for row in expected]
    assert all(event.event != "reset" for event in got)
    resumed.close()
