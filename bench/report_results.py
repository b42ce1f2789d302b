"""Report sign -> ORU^R01 received and acknowledged by a HIS on loopback.

The sidecar runs in its own process on a fresh PostgreSQL database, its results going to a HIS
simulator (tests/support/his_simulator.py) in this process, which answers AA at once. Each report is
prepared first (order, study with images arrived, linked, draft written); then:
- latency: sign one report over HTTP, wait until the HIS has its ORU, next (p50/p99 of
  sign request sent -> ORU received);
- throughput: sign a batch back to back, time until the HIS has filed every ORU.

    .venv/bin/python bench/report_results.py --reports 200
"""

from __future__ import annotations

import argparse
import time

import httpx
from sidecar_process import ADMIN_PASSWORD, SERVER, login, running_sidecar

from figures import percentile
from his_simulator import HisSimulator

RADIOLOGIST = ("bench-radiologist", "bench-radiologist-password")


def prepare(client: httpx.Client, admin: dict[str, str], count: int, tag: str) -> list[int]:
    """`count` draft reports on ordered, arrived, linked studies; returns the report ids."""
    reporter = login(str(client.base_url), *RADIOLOGIST)
    report_ids = []
    for n in range(count):
        order = client.post(
            "/api/imaging-orders",
            json={
                "patientId": f"{tag}-{n}",
                "modality": "CT",
                "placerOrderNumber": f"{tag}P{n}",
                "procedureDescription": "CT head",
            },
            headers=admin,
        ).json()
        study = client.post(
            "/api/studies",
            json={
                "patientId": f"{tag}-{n}",
                "accessionNumber": order["accessionNumber"],
                "studyInstanceUID": order["studyInstanceUID"],
                "modalities": ["CT"],
            },
            headers=admin,
        ).json()
        client.patch(
            f"/api/studies/{study['id']}/status", json={"status": "COMPLETED"}, headers=admin
        ).raise_for_status()
        client.post(
            f"/api/studies/{study['id']}/link-order", json={"orderId": order["id"]}, headers=admin
        ).raise_for_status()
        report = client.post(
            "/api/reports",
            json={
                "studyId": study["id"],
                "findings": "No acute intracranial abnormality.\nVentricles normal.",
                "impression": "Normal CT head.",
            },
            headers=reporter,
        )
        report.raise_for_status()
        report_ids.append(report.json()["id"])
    return report_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=200, help="reports per scenario")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    args = parser.parse_args()

    with (
        HisSimulator() as his,
        running_sidecar(
            args.server, HIS_MLLP_HOST="127.0.0.1", HIS_MLLP_PORT=str(his.port)
        ) as sidecar,
        httpx.Client(base_url=sidecar.url, timeout=30) as client,
    ):
        admin = login(sidecar.url, "admin", ADMIN_PASSWORD)
        client.post(
            "/api/users",
            json={"username": RADIOLOGIST[0], "password": RADIOLOGIST[1], "role": "radiologist"},
            headers=admin,
        ).raise_for_status()
        reporter = login(sidecar.url, *RADIOLOGIST)

        warm = prepare(client, admin, 10, "W")
        for report_id in warm:
            client.post(f"/api/reports/{report_id}/sign", headers=reporter).raise_for_status()
        his.wait_for(len(warm))

        one_by_one = prepare(client, admin, args.reports, "L")
        latencies = []
        for report_id in one_by_one:
            expected = len(his.filed()) + 1
            started = time.perf_counter()
            client.post(f"/api/reports/{report_id}/sign", headers=reporter).raise_for_status()
            arrived = his.wait_for(expected)[-1].at
            latencies.append(arrived - started)

        batch = prepare(client, admin, args.reports, "T")
        before = len(his.filed())
        started = time.perf_counter()
        for report_id in batch:
            client.post(f"/api/reports/{report_id}/sign", headers=reporter).raise_for_status()
        filed = his.wait_for(before + len(batch), timeout=120)
        elapsed = filed[-1].at - started

        print(f"{args.reports} reports per scenario, PostgreSQL, HIS on loopback answering AA")
        print(
            f"  sign -> ORU at the HIS, one at a time: p50 {percentile(latencies, 0.5) * 1000:.1f}"
            f" ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms"
        )
        print(
            f"  {len(batch)} signs back to back: all ORUs filed in {elapsed:.2f} s "
            f"({len(batch) / elapsed:.1f} results/s)"
        )
        print("target: p99 <= 1 s")


if __name__ == "__main__":
    main()
