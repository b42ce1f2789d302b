"""The HIS side of the HL7 tests: an MLLP client sending to a running sidecar, and a view of the
sidecar's API to check what became of each message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient
from sidecar.core.settings import Settings

from stack import LiveSidecar, free_port
from testapp import ADMIN_PASSWORD, CLOSED_ORTHANC_URL, TEST_JWT_SECRET, TEST_PLUGIN_TOKEN


class Hospital:
    """The HIS side: an MLLP client, and a view of the sidecar's API."""

    def __init__(self, sidecar: LiveSidecar) -> None:
        self.sidecar = sidecar
        self.mllp = MllpClient("127.0.0.1", sidecar.settings.mllp_port, timeout=10)
        token = httpx.post(
            f"{sidecar.url}/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        ).json()
        self.headers = {"Authorization": f"Bearer {token['accessToken']}"}

    def send(self, message: str | bytes) -> Any:
        return parse_ack(self.mllp.send(message))

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.sidecar.url}{path}", params=params, headers=self.headers)
        response.raise_for_status()
        return response.json()

    def order(self, accession_number: str) -> dict[str, Any]:
        items = self.get("/api/imaging-orders", accessionNumber=accession_number)["items"]
        assert len(items) == 1, items
        found: dict[str, Any] = items[0]
        return found


@contextmanager
def running_hospital(tmp_path: Path, database_url: str, **settings: Any) -> Iterator[Hospital]:
    """A live sidecar with its MLLP listener (Orthanc down), and the HIS side of it; `settings`
    changes the sidecar's."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var",
        "database_url": database_url,
        "jwt_secret": TEST_JWT_SECRET,
        "admin_password": ADMIN_PASSWORD,
        "sidecar_plugin_token": TEST_PLUGIN_TOKEN,
        "sidecar_port": free_port(),
        "orthanc_url": CLOSED_ORTHANC_URL,
        "reconcile_enabled": False,
        "mllp_port": free_port(),
        "mpps_port": free_port(),
        "timezone": "Europe/Brussels",
    }
    sidecar = LiveSidecar(Settings(**{**values, **settings}))
    sidecar.start()
    try:
        his = Hospital(sidecar)
        try:
            yield his
        finally:
            his.mllp.close()
    finally:
        sidecar.stop()
