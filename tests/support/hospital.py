"""The HIS side of the HL7 tests: an MLLP client sending to a running sidecar, and a view of the
sidecar's API to check what became of each message."""

from __future__ import annotations

from typing import Any

import httpx

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from stack import LiveSidecar
from testapp import ADMIN_PASSWORD


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
