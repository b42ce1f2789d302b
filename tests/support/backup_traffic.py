"""Backup tests' helpers: a Stack laid out as `make run` lays a node out (Orthanc in
DATA_DIR/orthanc), the environment that names it to `python -m sidecar`, and real traffic (C-STORE
and ORM^O01 over MLLP) running in threads while a backup is taken."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import store_pynetdicom
from hl7_samples import ORM_NW_251, with_field
from reporting import SECTIONS
from stack import Stack, wait_for

REPO = Path(__file__).resolve().parents[2]
_numbers = itertools.count(1)


def node_shaped(stack: Stack, index_url: str = "") -> Stack:
    """The stack's sidecar given DATA_DIR = the stack's folder, so that its Orthanc sits where
    the launcher puts a node's (DATA_DIR/orthanc, index in DATA_DIR/orthanc/storage); before
    the sidecar starts."""
    stack.settings = stack.settings.model_copy(
        update={
            "data_dir": stack.work_dir,
            "orthanc_storage_dir": stack.work_dir / "orthanc" / "storage",
            "orthanc_index_url": index_url,
        }
    )
    return stack


def node_environment(stack: Stack) -> dict[str, str]:
    """What `python -m sidecar backup|restore` reads to find this stack's node."""
    settings = stack.settings
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "ORTHANC_", "DATA_DIR", "NODE_NAME"))
    }
    env.update(
        DATA_DIR=str(settings.data_dir),
        DATABASE_URL=settings.database_url,
        ORTHANC_INDEX_URL=settings.orthanc_index_url,
        NODE_NAME="backup-test-node",
        PYTHONPATH=str(REPO),
    )
    return env


def sidecar_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def new_order(stack: Stack) -> str:
    """An ORM^O01 NW over MLLP, accepted; its accession number."""
    n = next(_numbers)
    accession = f"ACC-BK-{n:04d}"
    message = ORM_NW_251
    for segment, number, value in (
        ("MSH", 10, f"MSG-BK-{n}"),
        ("ORC", 2, f"PLC-BK-{n}^HIS"),
        ("ORC", 3, ""),
        ("OBR", 2, f"PLC-BK-{n}^HIS"),
        ("OBR", 3, ""),
        ("OBR", 18, accession),
        ("ZDS", 1, f"1.2.826.0.1.3680043.9.7.1.77{os.getpid()}.{n}^HIS^Application^DICOM"),
    ):
        message = with_field(message, segment, number, value)
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        ack = parse_ack(his.send(message))
    assert ack.code == "AA", ack
    return accession


def new_study(stack: Stack, directory: Path, *, instances: int = 3) -> str:
    """A study C-STOREd to the stack's Orthanc; its Study Instance UID."""
    study = make_study(
        directory / f"study-{next(_numbers)}", series_count=1, instances_per_series=instances
    )
    statuses = store_pynetdicom(study.files, *stack.dicom_address)
    assert statuses == [0] * len(study.files), statuses
    return study.study_instance_uid


def signed_report(stack: Stack, radiologist: dict[str, str], study_id: int) -> int:
    created = stack.api(
        "POST", "/api/reports", json={"studyId": study_id, **SECTIONS}, headers=radiologist
    )
    assert created.status_code == 201, created.text
    report_id = int(created.json()["id"])
    signed = stack.api("POST", f"/api/reports/{report_id}/sign", headers=radiologist)
    assert signed.status_code == 200, signed.text
    return report_id


def radiologist_of(stack: Stack) -> dict[str, str]:
    password = "radiologist-password-for-backups"
    created = stack.api(
        "POST",
        "/api/users",
        json={"username": "dr.backup", "password": password, "role": "radiologist"},
    )
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {stack.login('dr.backup', password)}"}


@dataclass
class Traffic:
    """C-STORE and ORM^O01 sent in a loop, each in a thread, until stopped."""

    stack: Stack
    directory: Path
    studies: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _loop(self, send: Any, into: list[str]) -> None:
        try:
            while not self._stop.is_set():
                into.append(send())
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        threads = [
            threading.Thread(
                target=self._loop,
                args=(lambda: new_study(self.stack, self.directory), self.studies),
            ),
            threading.Thread(target=self._loop, args=(lambda: new_order(self.stack), self.orders)),
        ]
        for thread in threads:
            thread.start()
        try:
            # Both really running before the caller acts.
            wait_for(
                lambda: (self.studies and self.orders) or self.errors, timeout=60, what="traffic"
            )
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(120)
        assert not self.errors, self.errors
