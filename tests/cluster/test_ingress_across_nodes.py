"""The DICOM ingress filter (orthanc/dicom_ingress.lua) across the nodes of a cluster: one Study
Instance UID, one patient, whichever node each instance reaches.

Each node's filter remembers, for a short while, the patient id it last accepted each UID under,
so that a study's later instances cost no lookup in Orthanc's index. What another node's Orthanc
stored since is only in the index the nodes share: once that while has passed, a node must look
again rather than trust its memory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster_nodes import ClusterNode, two_nodes
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import free_port

pytestmark = pytest.mark.orthanc

REFUSED = 0xA700
#: ACCEPTED_SECONDS in orthanc/dicom_ingress.lua, whole seconds of os.time(): its memory of an
#: accepted UID has lapsed once this has passed.
FILTER_MEMORY_SECONDS = 2 + 1


@pytest.fixture(scope="module")
def nodes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_template: str,
) -> Iterator[tuple[ClusterNode, ClusterNode]]:
    """Two nodes on one database, one Orthanc index and one storage folder, started one after
    the other (both would create Orthanc's index schema at once)."""
    with two_nodes(
        request,
        tmp_path_factory,
        database_template,
        label="ingress-cluster",
        lease_seconds=15.0,
        # Nothing here sends a result or a notification: nobody listens there.
        his_port=free_port(),
        notification_url=f"http://127.0.0.1:{free_port()}/notify",
    ) as started:
        yield started


def orthanc_patients(node: ClusterNode, study_instance_uid: str) -> list[str]:
    """The patient ids Orthanc (the index both nodes share) holds this Study Instance UID under."""
    studies = httpx.get(f"{node.orthanc_url}/studies?expand", timeout=10).json()
    return sorted(
        study["PatientMainDicomTags"]["PatientID"]
        for study in studies
        if study["MainDicomTags"]["StudyInstanceUID"] == study_instance_uid
    )


def test_a_uid_another_node_stored_under_another_patient_is_refused(
    nodes: tuple[ClusterNode, ClusterNode], tmp_path: Path
) -> None:
    a, b = nodes
    uid = f"1.2.826.0.1.3680043.9.7.16.{uuid.uuid4().int % 10**12}"
    first = make_study(
        tmp_path / "first",
        series_count=1,
        instances_per_series=1,
        patient_id="PAT-A",
        study_instance_uid=uid,
    )
    assert storescu_dcmtk(first.files, *a.dicom_address).all_success
    # Deleted from Orthanc (an administrator, through its REST API), then the same UID sent to
    # node B under another patient id: nothing holds it any more, so B accepts it.
    (held,) = [
        s["ID"]
        for s in httpx.get(f"{a.orthanc_url}/studies?expand", timeout=10).json()
        if s["MainDicomTags"]["StudyInstanceUID"] == uid
    ]
    httpx.delete(f"{a.orthanc_url}/studies/{held}", timeout=10).raise_for_status()
    second = make_study(
        tmp_path / "second",
        series_count=1,
        instances_per_series=1,
        patient_id="PAT-B",
        study_instance_uid=uid,
    )
    assert storescu_dcmtk(second.files, *b.dicom_address).all_success
    assert orthanc_patients(a, uid) == ["PAT-B"]

    time.sleep(FILTER_MEMORY_SECONDS)  # node A's memory of accepting PAT-A has lapsed
    late = make_study(
        tmp_path / "late",
        series_count=1,
        instances_per_series=1,
        patient_id="PAT-A",
        study_instance_uid=uid,
    )
    refused = storescu_dcmtk(late.files, *a.dicom_address, check=False)
    assert refused.statuses == [REFUSED]
    assert orthanc_patients(b, uid) == ["PAT-B"]
