"""/health's alarms: a disk below DISK_MIN_FREE_PERCENT makes it 503 with the reason, a queue
whose oldest item waited past BACKLOG_WARN_SECONDS makes it 200 `degraded` with a warning."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.core.dependencies import services_of
from sidecar.core.models import utcnow
from sidecar.ingest.models import PendingStudy
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.operations.alarms import DiskUsage, DiskWatch
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus

from testapp import app_settings

GIB = 1 << 30


@pytest.fixture
def health_of(plain_orthanc: OrthancProcess, database_url: str, tmp_path: Path) -> Iterator[Any]:
    """GET /health of an app beside a running Orthanc (so only the alarm under test fails),
    built with `changes` to its settings; the app's disk watch is returned to be faked."""
    clients: list[TestClient] = []

    def health(**changes: Any) -> tuple[TestClient, DiskWatch]:
        settings = app_settings(database_url, tmp_path, orthanc_url=plain_orthanc.url, **changes)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        client = TestClient(create_app(settings))
        clients.append(client)
        return client, services_of(client.app).get(DiskWatch)

    yield health
    for client in clients:
        client.close()


def fake_disks(free_percent: dict[str, float]) -> Any:
    def read(path: Path) -> DiskUsage:
        percent = next(value for name, value in free_percent.items() if name in str(path))
        free = int(100 * GIB * percent / 100)
        return DiskUsage(100 * GIB, 100 * GIB - free, free)

    return read


# The disk alarms read the file system, not the database (the backlog alarm below reads it).
@pytest.mark.one_database
def test_a_full_disk_makes_health_unavailable_and_says_which(health_of: Any) -> None:
    client, disks = health_of(disk_min_free_percent=10)
    disks.reader = fake_disks({"storage": 4.2, "var": 55.0})

    answer = client.get("/health")

    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["orthanc"]["status"] == "up"
    disk = body["checks"]["disk"]
    assert disk["status"] == "down"
    assert disk["orthancStorage"] == {
        "status": "low",
        "freeBytes": int(4.2 * GIB),
        "totalBytes": 100 * GIB,
        "freePercent": 4.2,
    }
    assert disk["dataDirectory"]["status"] == "ok"
    assert body["reasons"] == [
        "disk: orthancStorage has 4.2% free, below DISK_MIN_FREE_PERCENT (10%)"
    ]

    disks.reader = fake_disks({"storage": 10.5, "var": 9.9})
    body = client.get("/health").json()
    assert body["reasons"] == [
        "disk: dataDirectory has 9.9% free, below DISK_MIN_FREE_PERCENT (10%)"
    ]

    disks.reader = fake_disks({"storage": 10.5, "var": 55.0})
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    assert "reasons" not in answer.json()


@pytest.mark.one_database
def test_the_real_filesystem_is_measured(health_of: Any, tmp_path: Path) -> None:
    """The real reader on the test's own filesystem: figures that hold together; and as no
    filesystem is entirely free, a minimum of 100% must raise the alarm."""
    client, _ = health_of(orthanc_storage_dir=tmp_path)
    disk = client.get("/health").json()["checks"]["disk"]
    for place in ("orthancStorage", "dataDirectory"):
        assert 0 < disk[place]["freeBytes"] <= disk[place]["totalBytes"], place
        assert disk[place]["status"] == "ok"
    assert disk["minFreePercent"] == 10

    client, _ = health_of(orthanc_storage_dir=tmp_path, disk_min_free_percent=100)
    answer = client.get("/health")
    assert answer.status_code == 503
    assert any(reason.startswith("disk: orthancStorage has") for reason in answer.json()["reasons"])


@pytest.mark.one_database
def test_a_storage_folder_not_mounted_here_is_unknown_not_an_alarm(
    health_of: Any, tmp_path: Path
) -> None:
    client, _ = health_of(orthanc_storage_dir=tmp_path / "elsewhere" / "storage")
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["checks"]["disk"]["orthancStorage"] == {
        "status": "unknown",
        "error": "not found",
    }


def _queue_old_work(engine: Engine, age: timedelta) -> None:
    since = utcnow() - age
    with Session(engine) as session:
        session.add(PendingStudy(orthanc_id="0f1e2d3c-aged", source="changes", queued_at=since))
        session.add(
            Hl7Message(
                direction=Hl7Direction.OUTBOUND,
                control_id="RES-AGED-1",
                message_type="ORU^R01",
                sender="RADIOLOGY",
                status=Hl7MessageStatus.PENDING,
                raw="MSH|^~\\&|RADIOLOGY",
                received_at=since,
            )
        )
        session.commit()


def test_work_waiting_too_long_degrades_health_without_failing_it(
    health_of: Any, engine: Engine
) -> None:
    client, _ = health_of(backlog_warn_seconds=300)
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["backlogs"]["results"] == {"oldestSeconds": None}

    _queue_old_work(engine, timedelta(seconds=200))
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert 200 <= body["backlogs"]["results"]["oldestSeconds"] < 300
    assert 200 <= body["backlogs"]["registrations"]["oldestSeconds"] < 300

    client, _ = health_of(backlog_warn_seconds=120)
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "degraded"
    assert [warning.split(" has waited")[0] for warning in body["warnings"]] == [
        "backlog: the oldest of results",
        "backlog: the oldest of registrations",
    ]
    assert all("BACKLOG_WARN_SECONDS (120 s)" in warning for warning in body["warnings"])
