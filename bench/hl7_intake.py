"""HL7 order intake benchmark: ORM^O01 -> ACK over MLLP, each order committed before its AA.

The sidecar runs for real in its own process (`python -m sidecar`: uvicorn, its MLLP listener, the
worklist publisher) on a fresh PostgreSQL database; the HIS is hl7.mllp.client.MllpClient in this
one. Every message is a distinct new order (own control id, placer number, accession number, Study
Instance UID). Reported: messages/s and send-to-ACK latency p50/p99, on one connection and on eight
concurrent connections.

    make bench                      # or: .venv/bin/python bench/hl7_intake.py --messages 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
from sidecar_process import SERVER, running_sidecar  # first: puts tests/support on sys.path

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from figures import percentile  # bench/, beside this script
from hl7_samples import ORM_NW_251, with_field
from stack import wait_for


def orders(count: int, prefix: str) -> list[str]:
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
        made.append(text)
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

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
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
        for connections in (1, 8):
            rate, latencies = run(
                sidecar.mllp_port, connections, orders(args.messages, f"C{connections}")
            )
            print(
                f"  {connections} connection(s): {rate:7.1f} messages/s, ACK latency "
                f"p50 {percentile(latencies, 0.5) * 1000:5.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:5.1f} ms, "
                f"mean {statistics.mean(latencies) * 1000:5.1f} ms"
            )
            offered += args.messages
            if worklist:
                lag = worklist_lag(sidecar.url, offered)
                print(f"    every order on the worklist {lag:.2f} s after the last ACK")
        print("targets: >= 200 messages/s on one connection, p99 <= 50 ms")


if __name__ == "__main__":
    main()
