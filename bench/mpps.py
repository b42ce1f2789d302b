"""MPPS: N-CREATE + N-SET pairs from one modality over one association.

The sidecar runs in its own process on a fresh PostgreSQL database (or SQLite with --sqlite), with
its MPPS SCP and a HIS simulator in this process answering the status updates (so each IN
PROGRESS also queues and delivers an ORM^O01 IP, as in production). First `--orders` scheduled
orders are created over the API; then one association sends, for each, N-CREATE IN PROGRESS and
N-SET COMPLETED (one series of 20 images). Reported: steps (pairs) per second, N-CREATE and N-SET
response p50/p99, and the time until the HIS has every IP.

    .venv/bin/python bench/mpps.py --orders 500
"""

from __future__ import annotations

import argparse
import time

import httpx
from sidecar_process import ADMIN_PASSWORD, SERVER, login, running_sidecar

from figures import percentile
from his_simulator import HisSimulator
from modality import completed, in_progress, modality


def schedule(client: httpx.Client, admin: dict[str, str], count: int) -> list[dict[str, str]]:
    orders = []
    for n in range(count):
        created = client.post(
            "/api/imaging-orders",
            json={
                "patientId": f"MPPS-{n}",
                "modality": "CT",
                "placerOrderNumber": f"MPPS-P{n}",
                "procedureDescription": "CT head",
                "scheduledAt": "2026-11-30T10:00:00+01:00",
                "scheduledStationAet": "CT01",
            },
            headers=admin,
        )
        created.raise_for_status()
        orders.append(created.json())
    return orders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=500, help="steps to perform")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()

    with (
        HisSimulator() as his,
        running_sidecar(
            args.server, sqlite=args.sqlite, HIS_MLLP_HOST="127.0.0.1", HIS_MLLP_PORT=str(his.port)
        ) as sidecar,
        httpx.Client(base_url=sidecar.url, timeout=30) as client,
    ):
        admin = login(sidecar.url, "admin", ADMIN_PASSWORD)
        orders = schedule(client, admin, args.orders)
        creates, sets = [], []
        with modality(sidecar.mpps_port, calling="CT01") as scanner:
            started = time.perf_counter()
            for n, order in enumerate(orders):
                attributes = in_progress(
                    study_instance_uid=order["studyInstanceUID"],
                    accession_number=order["accessionNumber"],
                    patient_id=f"MPPS-{n}",
                    station="CT01",
                    modality="CT",
                )
                sent = time.perf_counter()
                answer, uid = scanner.create(attributes)
                creates.append(time.perf_counter() - sent)
                assert answer.status == 0x0000, answer
                series = f"1.2.826.0.1.3680043.9.7.9.{n}"
                images = [f"{series}.{i}" for i in range(1, 21)]
                done = completed(series=[(series, images)])
                sent = time.perf_counter()
                answer = scanner.set(uid, done)
                sets.append(time.perf_counter() - sent)
                assert answer.status == 0x0000, answer
            elapsed = time.perf_counter() - started
        filed = his.wait_for(len(orders), timeout=120)
        told = filed[-1].at - started

        database = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"{len(orders)} MPPS steps (N-CREATE + N-SET) over one association, {database}")
        print(f"  {len(orders) / elapsed:.1f} steps/s ({elapsed:.2f} s)")
        for name, values in (("N-CREATE", creates), ("N-SET", sets)):
            print(
                f"  {name} response p50 {percentile(values, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(values, 0.99) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
            )
        print(f"  every IP filed by the HIS {told:.2f} s after the first N-CREATE")


if __name__ == "__main__":
    main()
