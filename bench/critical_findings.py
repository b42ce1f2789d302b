"""Critical finding notification benchmark: POST /api/critical-findings -> webhook received.

The sidecar runs for real in its own process (`python -m sidecar`) on a fresh PostgreSQL
database (or SQLite with --sqlite), with NOTIFICATION_SERVICE_URL pointing at a loopback HTTP
server in this process (tests/support/webhook_receiver.py). Latency is from just before the POST is
sent to the moment the notification service receives the finding's webhook: the request, the
commit of finding + outbox row, the worker waking, and the delivery. Two scenarios: one finding
at a time (each waits for its webhook), and a burst from eight concurrent clients (the outbox
delivers one at a time, so later findings queue).

    make bench          # or: .venv/bin/python bench/critical_findings.py --findings 200 [--sqlite]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx
import sqlalchemy as sa
from sidecar_process import ADMIN_PASSWORD, SERVER, login, running_sidecar  # puts tests/ on path

from sidecar.core.database import make_engine

from builders import UID_ROOT, orthanc_study, seed_study
from figures import percentile  # bench/, beside this script
from webhook_receiver import WebhookReceiver

PASSWORD = "bench-user-password"


def ordered_study(http: httpx.Client, admin: dict[str, str], database_url: str) -> int:
    """An order with an ordering provider, and its study (registered as the sync would)."""
    order = http.post(
        "/api/imaging-orders",
        headers=admin,
        json={
            "patientId": "BENCH-PAT",
            "modality": "CT",
            "procedureDescription": "CT head",
            "orderingProvider": "HOUSE^GREGORY",
            "providerId": "DR-0042",
        },
    )
    order.raise_for_status()
    engine = make_engine(database_url)
    try:
        study_id = seed_study(
            engine,
            orthanc_study(
                f"{UID_ROOT}.99.1",
                accession_number=order.json()["accessionNumber"],
                patient_id="BENCH-PAT",
            ),
        )
    finally:
        engine.dispose()
    linked = http.post(
        f"/api/studies/{study_id}/link-order", headers=admin, json={"orderId": order.json()["id"]}
    )
    linked.raise_for_status()
    return study_id


def raise_one(http: httpx.Client, headers: dict[str, str], study_id: int) -> tuple[int, float]:
    started = time.perf_counter()
    response = http.post(
        "/api/critical-findings",
        headers=headers,
        json={"studyId": study_id, "severity": "CRITICAL", "description": "Tension pneumothorax"},
    )
    response.raise_for_status()
    return int(response.json()["id"]), started


def latencies(receiver: WebhookReceiver, sent: dict[int, float], first: int) -> list[float]:
    receiver.wait_for_count(first + len(sent), timeout=120)
    arrived = {
        body["findingId"]: at
        for body, at in zip(receiver.received, receiver.arrival_times, strict=True)
    }
    return [arrived[finding_id] - started for finding_id, started in sent.items()]


def one_at_a_time(
    base: str, headers: dict[str, str], study_id: int, receiver: WebhookReceiver, count: int
) -> list[float]:
    first = len(receiver.received)
    sent: dict[int, float] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        for n in range(count):
            finding_id, started = raise_one(http, headers, study_id)
            sent[finding_id] = started
            receiver.wait_for_count(first + n + 1, timeout=30)
    return latencies(receiver, sent, first)


def burst(
    base: str, headers: dict[str, str], study_id: int, receiver: WebhookReceiver, count: int
) -> list[float]:
    first = len(receiver.received)
    sent: dict[int, float] = {}
    lock = threading.Lock()

    def client(share: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(share):
                finding_id, started = raise_one(http, headers, study_id)
                with lock:
                    sent[finding_id] = started

    threads = [threading.Thread(target=client, args=(count // 8,)) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posted = time.perf_counter() - started
    values = latencies(receiver, sent, first)
    delivered = max(receiver.arrival_times) - started
    print(
        f"  burst: {len(sent)} POSTs answered in {posted:.2f} s ({len(sent) / posted:.0f}/s), "
        f"all webhooks received after {delivered:.2f} s ({len(sent) / delivered:.0f}/s)"
    )
    return values


def print_attempts(database_url: str) -> None:
    """How much of a delivery is the POST itself (the attempts table's own timing)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            durations = [
                float(d)
                for (d,) in connection.execute(
                    sa.text("SELECT duration_ms FROM critical_finding_notification_attempt")
                )
            ]
    finally:
        engine.dispose()
    print(
        f"  {len(durations)} delivery attempts; the POST itself took p50 "
        f"{percentile(durations, 0.5):.1f} ms, p99 {percentile(durations, 0.99):.1f} ms"
    )


def report(label: str, values: list[float]) -> None:
    print(
        f"  {label}: {len(values)} findings, POST -> webhook received "
        f"p50 {percentile(values, 0.5) * 1000:6.1f} ms, "
        f"p99 {percentile(values, 0.99) * 1000:6.1f} ms, "
        f"max {max(values) * 1000:6.1f} ms, mean {statistics.mean(values) * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=200, help="findings per scenario")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()

    receiver = WebhookReceiver().start()
    try:
        with running_sidecar(
            args.server,
            sqlite=args.sqlite,
            MLLP_ENABLED="false",
            WORKLIST_ENABLED="false",
            NOTIFICATION_SERVICE_URL=receiver.url,
        ) as sidecar:
            base = sidecar.url
            with httpx.Client(base_url=base, timeout=30) as http:
                admin = login(base, "admin", ADMIN_PASSWORD)
                http.post(
                    "/api/users",
                    headers=admin,
                    json={"username": "rad.bench", "password": PASSWORD, "role": "radiologist"},
                ).raise_for_status()
                radiologist = login(base, "rad.bench", PASSWORD)
                study_id = ordered_study(http, admin, sidecar.database_url)
            one_at_a_time(base, radiologist, study_id, receiver, 20)  # warm-up
            kind = "SQLite" if args.sqlite else "PostgreSQL"
            print(f"critical finding -> webhook, sidecar in its own process, {kind}")
            report(
                "one at a time",
                one_at_a_time(base, radiologist, study_id, receiver, args.findings),
            )
            report("burst, 8 clients", burst(base, radiologist, study_id, receiver, args.findings))
            print_attempts(sidecar.database_url)
            print("target: p99 <= 1 s")
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
