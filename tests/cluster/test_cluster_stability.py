"""A study still arriving on one node, seen from the node that registers studies: two real
nodes (what `make run` starts) on one PostgreSQL database, Orthanc index and storage.

Orthanc follows the stability of a study (no new instance for StableAge seconds) in the memory
of the Orthanc process that receives it: every other Orthanc of the cluster says IsStable at
once (the Orthanc Book, "Stable resources", several servers on one database). The sidecar
registers a study only once it is stable, so that its images are complete when it becomes
ready to read; in a cluster, the registration runs on the node holding the `orthanc-sync`
lease and asks that node's Orthanc.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster_nodes import ClusterNode, two_nodes
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from his_simulator import HisSimulator
from webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.orthanc

LEASE_SECONDS = 6.0
#: Long enough that a study sent in two parts is plainly unstable on its receiving node while
#: the test watches.
STABLE_AGE = 30
#: How long the test watches the study, well within STABLE_AGE.
WATCH_SECONDS = 10.0


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
            label="stability",
            lease_seconds=LEASE_SECONDS,
            his_port=his.port,
            notification_url=notifications.url,
            STABLE_AGE=str(STABLE_AGE),
        ) as started:
            yield started
    finally:
        his.stop()
        notifications.stop()


def orthanc_is_stable(node: ClusterNode, study_instance_uid: str) -> bool | None:
    """What this node's Orthanc says of the study (None: it does not know it)."""
    found = httpx.post(f"{node.orthanc_url}/tools/lookup", content=study_instance_uid, timeout=10)
    found.raise_for_status()
    studies = [item["ID"] for item in found.json() if item["Type"] == "Study"]
    if not studies:
        return None
    study = httpx.get(f"{node.orthanc_url}/studies/{studies[0]}", timeout=10)
    study.raise_for_status()
    return bool(study.json()["IsStable"])


def test_a_study_still_arriving_on_another_node_is_not_registered_before_it_is_stable(
    nodes: tuple[ClusterNode, ClusterNode], tmp_path: Path
) -> None:
    a, b = nodes
    syncing = a.health()["cluster"]["leases"]["orthanc-sync"]
    assert syncing in (a.name, b.name), syncing
    receiver = b if syncing == a.name else a
    registrar = a if receiver is b else b
    study = make_study(tmp_path / "study", series_count=1, instances_per_series=2)
    # The first part of the study; the modality sends the rest later (a second association).
    assert storescu_dcmtk(study.files[:1], *receiver.dicom_address).all_success
    assert orthanc_is_stable(receiver, study.study_instance_uid) is False
    registered_while_arriving: list[bool | None] = []
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline and not registered_while_arriving:
        if any(s["studyInstanceUID"] == study.study_instance_uid for s in registrar.studies()):
            registered_while_arriving.append(
                orthanc_is_stable(receiver, study.study_instance_uid) is False
            )
        time.sleep(0.25)
    assert orthanc_is_stable(registrar, study.study_instance_uid) is not False, (
        "the registering node's Orthanc says stable: the premise holds"
    )
    assert registered_while_arriving in ([], [False]), (
        "registered while its receiving Orthanc still had it unstable"
    )
