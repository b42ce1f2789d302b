"""HL7 order intake benchmark: ORM^O01 -> ACK over MLLP, each order committed before its AA.

The sidecar runs for real in its own process (`python -m sidecar`: uvicorn, its MLLP listener, the
worklist publisher) on a fresh PostgreSQL database; the HIS is hl7.client.MllpClient in this one.
Every message is a distinct new order
(own control id, placer number, accession number, Study Instance UID). Reported: messages/s and
send-to-ACK latency p50/p99, on one connection and on eight concurrent connections.

    make bench                      # or: .venv/bin/python bench/hl7_intake.py --messages 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from figures import percentile  # bench/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hl7.ack import parse_ack  # noqa: E402
from hl7.client import MllpClient  # noqa: E402

from hl7_samples import ORM_NW_251, with_field  # noqa: E402
from stack import free_port, wait_for  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


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


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/db", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per scenario")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    args = parser.parse_args()

    name = f"bench_hl7_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hl7-") as tmp:
            http_port, mllp_port = free_port(), free_port()
            env = {
                **os.environ,
                "DATA_DIR": tmp,
                "DATABASE_URL": str(sa.engine.make_url(args.server).set(database=name)),
                "JWT_SECRET": "bench-" + "x" * 40,
                "SIDECAR_PORT": str(http_port),
                "ORTHANC_URL": "http://127.0.0.1:9",
                "RECONCILE_ENABLED": "false",
                "MLLP_PORT": str(mllp_port),
                "TIMEZONE": "Europe/Brussels",
                "LOG_LEVEL": "WARNING",
                "WORKLIST_ENABLED": os.environ.get("WORKLIST_ENABLED", "true"),
            }
            sidecar = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, cwd=REPO)
            if os.environ.get("BENCH_PID_FILE"):
                Path(os.environ["BENCH_PID_FILE"]).write_text(str(sidecar.pid))
            try:
                wait_for(lambda: _up(http_port), timeout=60, what="sidecar")
                run(mllp_port, 1, orders(50, "WARM"))  # connections and caches
                print(
                    f"{args.messages} new orders per scenario, PostgreSQL, commit before ACK, "
                    "worklist file written per order (after the ACK)"
                )
                for connections in (1, 8):
                    rate, latencies = run(
                        mllp_port, connections, orders(args.messages, f"C{connections}")
                    )
                    print(
                        f"  {connections} connection(s): {rate:7.1f} messages/s, ACK latency "
                        f"p50 {percentile(latencies, 0.5) * 1000:5.1f} ms, "
                        f"p99 {percentile(latencies, 0.99) * 1000:5.1f} ms, "
                        f"mean {statistics.mean(latencies) * 1000:5.1f} ms"
                    )
                print("targets: >= 200 messages/s on one connection, p99 <= 50 ms")
            finally:
                sidecar.terminate()
                sidecar.wait(30)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
