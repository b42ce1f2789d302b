"""Two nodes of one cluster (PostgreSQL): a change made through node A is announced by node B's
event stream, and through B's nginx front, since events come from the shared database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster_nodes import ClusterNode, two_nodes
from sse_reader import SseReader
from stack import free_port

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def nodes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[tuple[ClusterNode, ClusterNode]]:
    with two_nodes(
        request,
        tmp_path_factory,
        database_template,
        label="events-cluster",
        lease_seconds=6.0,
        his_port=free_port(),  # nothing listens: results wait, which this test does not look at
        notification_url=f"http://127.0.0.1:{free_port()}/notify",
    ) as pair:
        yield pair


def test_a_change_on_one_node_is_announced_by_the_other(
    nodes: tuple[ClusterNode, ClusterNode],
) -> None:
    a, b = nodes
    direct = SseReader.open(f"{b.url}/api/events", {"Authorization": f"Bearer {b.login()}"})
    through_front = SseReader.open(
        f"{b.front}/api/events", {"Cookie": f"viewer_session={b.login()}"}
    )
    direct.wait_ready()
    through_front.wait_ready()
    made = a.api(
        "POST",
        "/api/imaging-orders",
        json={"patientId": "EV-CLUSTER-1", "modality": "CT", "procedureDescription": "CT head"},
    )
    assert made.status_code == 201, made.text
    order_id = made.json()["id"]
    for reader in (direct, through_front):
        seen = reader.until(lambda event: event.event == "order" and event.json["id"] == order_id)
        assert seen[-1].json == {
            "kind": "order",
            "action": "created",
            "id": order_id,
            "studyId": None,
        }
        reader.close()
