"""Who may read GET /metrics, and what turning it off turns off: open by default; with
METRICS_TOKEN, that bearer token or 401 (compared in constant time); METRICS_ENABLED false, 404
and nothing measured (no request timed, no HL7 message wrapped)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from hl7.ack import build_ack
from hl7.errors import Hl7Error, RequiredFieldMissing, UnsupportedMessageType
from hl7.header import read_header
from sidecar.main import create_app
from sidecar.operations.metrics import metered_hl7
from sidecar.orders.listener import OrderListener

from hl7_samples import ORM_NW_251
from metrics_scrape import moved, parse, value
from testapp import app_settings, service_of

TOKEN = "metrics-scrape-token-for-the-tests"


@pytest.fixture
def client_with(database_url: str, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        client = TestClient(create_app(app_settings(database_url, tmp_path, **changes)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# Who may scrape, and in which format: not the database's. The backlog gauges a scrape reads
# from the database are checked on both in test_metrics_backlog.py and test_metrics.py.
@pytest.mark.one_database
def test_open_by_default_in_prometheus_text_format(client_with: Callable[..., TestClient]) -> None:
    client = client_with()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = parse(response.text)
    assert value(samples, "sidecar_database_up") == 1
    # Orthanc is down here (a closed port): said so, and the change log's lag is not guessed.
    assert value(samples, "sidecar_orthanc_up") == 0
    assert not any(name == "sidecar_studies_changes_cursor_lag" for name, _ in samples)
    assert ("sidecar_database_pool_connections_in_use", frozenset({("pool", "api")})) in samples
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-the-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
@pytest.mark.one_database
def test_with_a_token_a_scrape_without_it_is_refused(
    client_with: Callable[..., TestClient], authorization: str | None
) -> None:
    client = client_with(metrics_token=TOKEN)
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert TOKEN not in response.text


@pytest.mark.one_database
def test_with_a_token_the_bearer_of_it_reads(client_with: Callable[..., TestClient]) -> None:
    client = client_with(metrics_token=TOKEN)
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert value(parse(response.text), "sidecar_database_up") == 1


@pytest.mark.one_database
def test_turned_off_it_answers_404_and_measures_nothing(
    client_with: Callable[..., TestClient],
) -> None:
    client = client_with(metrics_enabled=False, metrics_token=TOKEN)
    before = parse(generate_latest(REGISTRY).decode())
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert client.get("/health/db").status_code == 200
    after = parse(generate_latest(REGISTRY).decode())
    for route in ("/metrics", "/health/db"):
        for status in ("200", "404"):
            labels = {"route": route, "method": "GET", "status": status}
            assert moved(before, after, "http_request_duration_seconds_count", **labels) == 0
    listener = service_of(client.app, OrderListener)  # type: ignore[arg-type]
    assert listener.handler is listener.intake


def test_each_hl7_message_is_counted_with_the_ack_the_server_sends() -> None:
    """The wrapped MLLP handler: an ACK returned is read for its MSA-1; an HL7 error raised is
    counted with its own code, anything else raised as AR (what the MLLP server answers); a
    cancelled one (no ACK sent) not at all."""
    header = read_header(ORM_NW_251.encode())

    def handler(outcome: Exception | None) -> Callable[[bytes, object], Awaitable[bytes]]:
        async def handle(raw: bytes, peer: object) -> bytes:
            if isinstance(outcome, RuntimeError | UnsupportedMessageType):
                raise outcome
            error = outcome if isinstance(outcome, Hl7Error) else None
            return build_ack(
                header, error, control_id="ACK-1", timestamp=datetime.now(UTC)
            ).encode()

        return metered_hl7(handle)

    def count() -> Any:
        return parse(generate_latest(REGISTRY).decode())

    cases: list[tuple[Exception | None, str]] = [
        (None, "AA"),  # answered
        (RequiredFieldMissing("PID-3"), "AE"),  # answered
        (UnsupportedMessageType("not taken here"), "AR"),  # raised
        (RuntimeError("a bug"), "AR"),  # raised
    ]
    for outcome, code in cases:
        before = count()
        raises = isinstance(outcome, RuntimeError | UnsupportedMessageType)
        with pytest.raises(type(outcome)) if raises and outcome else nullcontext():
            asyncio.run(_awaited(handler(outcome)(ORM_NW_251.encode(), None)))
        after = count()
        name = "sidecar_hl7_messages_received_total"
        assert moved(before, after, name, message_type="ORM^O01", ack_code=code) == 1, outcome
        latency = "sidecar_hl7_ack_latency_seconds_count"
        assert moved(before, after, latency, message_type="ORM^O01") == 1

    # A message cut short by the listener stopping got no ACK: not counted.
    async def cancelled(raw: bytes, peer: object) -> bytes:
        raise asyncio.CancelledError

    before = count()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_awaited(metered_hl7(cancelled)(ORM_NW_251.encode(), None)))
    after = count()
    assert (
        moved(before, after, "sidecar_hl7_ack_latency_seconds_count", message_type="ORM^O01") == 0
    )


async def _awaited(answer: Awaitable[bytes]) -> bytes:
    return await answer
