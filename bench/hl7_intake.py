"""HL7 order intake benchmark: ORM^O01 -> ACK over MLLP, each order committed before its AA.

The sidecar runs for real in its own process (`python -m sidecar`: uvicorn, its MLLP listener, the
worklist publisher) on a fresh PostgreSQL database; the HIS is hl7.mllp.client.MllpClient in this
one. Every message is a distinct new order (own control id, placer number, accession number, Study
Instance UID). Reported: messages/s and send-to-ACK latency p50/p99, on one connection and on eight
concurrent connections.

With `--catalog N`, a procedure catalog of N codes is imported first (CSV over the API), and each
scenario runs twice: ORMs naming the modality in OBR-24 (their code is not in the catalog: the
lookup still happens), then ORMs naming only a catalog code in OBR-4 (no OBR-24), resolved
through the catalog to modality, station and protocol.

    make bench                      # or: .venv/bin/python bench/hl7_intake.py --messages 2000
    .venv/bin/python bench/hl7_intake.py --messages 2000 --catalog 5000

With `--adt`, ADT^A08 patient updates follow on one connection, in the same run: a new name
each time for one of 200 patients (each created by its first A08), so that every message
changes a record and is committed before its AA.

    .venv/bin/python bench/hl7_intake.py --messages 2000 --adt
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
from sidecar_process import (  # first: puts tests/support on sys.path
    ADMIN_PASSWORD,
    SERVER,
    login,
    running_sidecar,
)

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from figures import percentile, seconds_for  # bench/, beside this script
from hl7_samples import ADT_A08_251, ORM_NW_251, with_field
from stack import wait_for

MODALITIES = ("CT", "MR", "DX", "US", "CR", "MG", "NM", "XA")


def catalog_csv(size: int) -> bytes:
    """A catalog of `size` codes P00000...: every column filled, 40 stations."""
    rows = [
        "code,codingSystem,description,modality,bodyPart,stationAeTitle,stationName,"
        "protocolCode,expectedMinutes,priority"
    ]
    for n in range(size):
        modality = MODALITIES[n % len(MODALITIES)]
        station = f"{modality}{n % 5:02d}"
        rows.append(
            f"P{n:05d},99BENCH,Procedure {n},{modality},BODY{n % 30},{station},"
            f"ROOM {station},PROT{n % 200},{15 + n % 45},ROUTINE"
        )
    return ("\r\n".join(rows) + "\r\n").encode()


def import_catalog(base_url: str, size: int) -> float:
    """Imports the catalog; returns the seconds the import took."""
    headers = login(base_url, "admin", ADMIN_PASSWORD)
    started = time.perf_counter()
    answer = httpx.post(
        f"{base_url}/api/procedures/import",
        files={"file": ("catalog.csv", catalog_csv(size), "text/csv")},
        headers=headers,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    assert answer.json()["created"] == size, answer.text
    return elapsed


def orders(count: int, prefix: str, catalog: int = 0) -> list[str]:
    """New orders; with `catalog`, each names only a catalog code (OBR-4) and no OBR-24."""
    made = []
    root = f"1.2.826.0.1.3680043.9.7.{sum(map(ord, prefix))}"
    for n in range(count):
        text = with_field(ORM_NW_251, "MSH", 10, f"{prefix}-{n}")
        text = with_field(text, "ORC", 2, f"{prefix}P{n}^HIS")
        text = with_field(text, "OBR", 2, f"{prefix}P{n}^HIS")
        text = with_field(text, "ORC", 3, "")
        text = with_field(text, "OBR", 3, "")
        text = with_field(text, "OBR", 18, f"{prefix}{n}"[-16:])
        text = with_field(text, "ZDS", 1, f"{root}.{n}")
        if catalog:
            code = f"P{(n * 7919) % catalog:05d}"  # spread over the whole catalog
            text = with_field(with_field(text, "OBR", 4, code), "OBR", 24, "")
        made.append(text)
    return made


def updates(count: int, prefix: str, patients: int = 200) -> list[str]:
    """ADT^A08s: message n renames patient n % `patients` (a new name each time)."""
    made = []
    for n in range(count):
        text = with_field(ADT_A08_251, "MSH", 10, f"{prefix}-{n}")
        text = with_field(text, "PID", 3, f"{prefix}{n % patients}^^^GENHOSP^MR")
        made.append(with_field(text, "PID", 5, f"BENCH^NAME{n}"))
    return made


def run(port: int, connections: int, messages: list[str]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    shares = [messages[i::connections] for i in range(connections)]
    failures: list[str] = []

    def worker(share: list[str]) -> None:
        mine = []
        with MllpClient("127.0.0.1", port, timeout=30) as client:
            for message in share:
                started = time.perf_counter()
                ack = parse_ack(client.send(message))
                mine.append(time.perf_counter() - started)
                if ack.code != "AA":
                    failures.append(f"{ack.code} {ack.error_code} {ack.text}")
        with lock:
            latencies.extend(mine)

    elapsed = seconds_for(functools.partial(worker, share) for share in shares)
    if failures:
        raise SystemExit(f"{len(failures)} messages not accepted, e.g. {failures[0]}")
    return len(messages) / elapsed, latencies


def worklist_lag(base_url: str, expected: int) -> float:
    """Seconds until the worklist offers `expected` procedure steps (GET /health), from now."""
    started = time.perf_counter()

    def offered() -> bool:
        health = httpx.get(f"{base_url}/health", timeout=5).json()
        return bool(health["worklist"].get("scheduledProcedureSteps", 0) >= expected)

    wait_for(offered, timeout=120, interval=0.01, what=f"{expected} worklist items")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per scenario")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument(
        "--catalog", type=int, default=0, help="import a procedure catalog of N codes first"
    )
    parser.add_argument("--adt", action="store_true", help="then ADT^A08 updates on one connection")
    args = parser.parse_args()

    worklist = os.environ.get("WORKLIST_ENABLED", "true") == "true"
    with running_sidecar(args.server, WORKLIST_ENABLED=str(worklist).lower()) as sidecar:
        if os.environ.get("BENCH_PID_FILE"):
            Path(os.environ["BENCH_PID_FILE"]).write_text(str(sidecar.pid))
        run(sidecar.mllp_port, 1, orders(50, "WARM"))  # connections and caches
        offered = 50
        print(
            f"{args.messages} new orders per scenario, PostgreSQL, commit before ACK, "
            "worklist files written after the ACK (batched, by the writer process)"
        )
        if args.catalog:
            took = import_catalog(sidecar.url, args.catalog)
            print(f"  catalog of {args.catalog} codes imported (CSV over the API) in {took:.2f} s")
        kinds = [("OBR-24", 0)] + ([("catalog", args.catalog)] if args.catalog else [])
        for connections in (1, 8):
            for kind, catalog in kinds:
                rate, latencies = run(
                    sidecar.mllp_port,
                    connections,
                    orders(args.messages, f"C{connections}{kind[0]}", catalog),
                )
                label = f"{kind:7s} " if args.catalog else ""
                print(
                    f"  {label}{connections} connection(s): {rate:7.1f} messages/s, ACK latency "
                    f"p50 {percentile(latencies, 0.5) * 1000:5.1f} ms, "
                    f"p99 {percentile(latencies, 0.99) * 1000:5.1f} ms, "
                    f"mean {statistics.mean(latencies) * 1000:5.1f} ms"
                )
                offered += args.messages
                if worklist:
                    lag = worklist_lag(sidecar.url, offered)
                    print(f"    every order on the worklist {lag:.2f} s after the last ACK")
        if args.adt:
            rate, latencies = run(sidecar.mllp_port, 1, updates(args.messages, "ADT"))
            print(
                f"  ADT^A08 1 connection(s): {rate:7.1f} messages/s, ACK latency "
                f"p50 {percentile(latencies, 0.5) * 1000:5.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:5.1f} ms, "
                f"mean {statistics.mean(latencies) * 1000:5.1f} ms"
            )
        print("targets: >= 200 messages/s on one connection, p99 <= 50 ms")


if __name__ == "__main__":
    main()
