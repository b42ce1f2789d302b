"""What metrics and JSON logs cost: HL7 intake and ingest with them on and off, in the same run.

"on":  METRICS_ENABLED=true, LOG_FORMAT=json, and GET /metrics scraped every 5 s (as Prometheus
       would) while the load runs;
"off": METRICS_ENABLED=false, LOG_FORMAT=text, nothing scraped.
Both at LOG_LEVEL=INFO, the service's default (the benchmarks' WARNING would hide the cost of
formatting log lines); the sidecars' output goes to a file, not the terminal.

HL7 intake: two sidecars in their own processes (`python -m sidecar`), one on, one off, each on
a fresh PostgreSQL database, both running throughout; rounds of ORM^O01 -> ACK on one
connection alternate between them (off, on, on, off, ...) so that drift on a noisy machine hits
both alike (bench/hl7_intake.py's orders and sender).

Ingest: per round a fresh Orthanc (with the plugin) and a fresh sidecar process, on and off in
alternation; instances/s from the first C-STORE to every study listed by GET /api/studies with
all its instances (bench/ingest.py's load and sender).

Reported: the median of each side and the ratio on/off (goal >= 0.97).

    make bench            # or: .venv/bin/python bench/observability.py --messages 1000 --rounds 3
    .venv/bin/python bench/observability.py --messages 300 --instances 200 --rounds 2  # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx
from hl7_intake import orders, run
from ingest import make_load, send
from sidecar_process import (  # puts tests/support on sys.path
    ADMIN_PASSWORD,
    SERVER,
    RunningSidecar,
    login,
    running_sidecar,
)

from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess

from dicom_factory import GeneratedStudy
from stack import free_port, wait_for

#: Settings by environment variable (Any: running_sidecar's keywords are these and `sqlite`).
MODES: dict[str, dict[str, Any]] = {
    "on": {"METRICS_ENABLED": "true", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
    "off": {"METRICS_ENABLED": "false", "LOG_FORMAT": "text", "LOG_LEVEL": "INFO"},
}
SCRAPE_EVERY = 5.0
PLUGIN_TOKEN = "bench-plugin-token-" + "x" * 24


@contextmanager
def scraped(sidecar: RunningSidecar, enabled: bool) -> Iterator[list[int]]:
    """GET /metrics every SCRAPE_EVERY seconds while the block runs (when `enabled`); yields the
    sizes of the answers, to show the scrapes happened."""
    sizes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(SCRAPE_EVERY):
            response = httpx.get(f"{sidecar.url}/metrics", timeout=10)
            response.raise_for_status()
            sizes.append(len(response.content))

    thread = threading.Thread(target=scrape, daemon=True)
    if enabled:
        response = httpx.get(f"{sidecar.url}/metrics", timeout=10)  # one at once, as at start
        response.raise_for_status()
        sizes.append(len(response.content))
        thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        if enabled:
            thread.join()


@contextmanager
def children_output_to(path: Path) -> Iterator[TextIO]:
    """The processes started inside the block write to `path` (they inherit file descriptors 1
    and 2); what the benchmark prints goes to the yielded stream, the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    with path.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        terminal.close()


def hl7_rounds(server: str, messages: int, rounds: int, out: TextIO) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with ExitStack() as stack:
        sidecars = {
            mode: stack.enter_context(
                running_sidecar(server, WORKLIST_ENABLED="false", **environment)
            )
            for mode, environment in MODES.items()
        }
        for mode, sidecar in sidecars.items():
            run(sidecar.mllp_port, 1, orders(50, f"W{mode}"))  # connections and caches
        for n in range(rounds):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            for mode in order:
                sidecar = sidecars[mode]
                with scraped(sidecar, mode == "on") as sizes:
                    rate, _ = run(sidecar.mllp_port, 1, orders(messages, f"R{n}{mode}"))
                rates[mode].append(rate)
                scrapes = f", {len(sizes)} scrapes" if mode == "on" else ""
                print(f"  HL7 round {n + 1} {mode:3}: {rate:7.1f} messages/s{scrapes}", file=out)
    return rates


def ingest_round(
    work: Path, load: list[GeneratedStudy], mode: str, server: str, stable_age: int
) -> tuple[float, int]:
    """Instances/s from the first C-STORE to every study listed, and the scrapes made."""
    http_port, dicom_port = free_port(), free_port()
    environment: dict[str, Any] = {
        **MODES[mode],
        "ORTHANC_URL": f"http://127.0.0.1:{http_port}",
        "SIDECAR_PLUGIN_TOKEN": PLUGIN_TOKEN,
        "RECONCILE_ENABLED": "true",
        "RECONCILE_INTERVAL": "5",
        "STABLE_AGE": str(stable_age),
        "WORKLIST_ENABLED": "false",
    }
    with running_sidecar(server, **environment) as sidecar:
        orthanc = OrthancProcess(
            OrthancLayout(
                work_dir=work,
                http_port=http_port,
                dicom_port=dicom_port,
                stable_age=stable_age,
                sidecar_url=sidecar.url,
                plugin_token=PLUGIN_TOKEN,
            )
        )
        orthanc.start()
        try:
            headers = login(sidecar.url, "admin", ADMIN_PASSWORD)
            expected = {s.study_instance_uid: s.instance_count for s in load}
            with scraped(sidecar, mode == "on") as sizes:
                started = time.perf_counter()
                send(load, dicom_port)
                wait_for(
                    lambda: _all_listed(sidecar.url, headers, expected),
                    timeout=300,
                    what="every study registered",
                )
                seconds = time.perf_counter() - started
        finally:
            orthanc.stop()
    return sum(expected.values()) / seconds, len(sizes)


def _all_listed(url: str, headers: dict[str, str], expected: dict[str, int]) -> bool:
    """Whether GET /api/studies lists every study with all its instances (polled after the last
    C-STORE only, each 50 ms: polling during the C-STOREs would cost the sidecar CPU)."""
    time.sleep(0.05)
    response = httpx.get(f"{url}/api/studies", params={"limit": 1000}, headers=headers, timeout=30)
    counts = {s["studyInstanceUID"]: s["instanceCount"] for s in response.json()["items"]}
    return all(counts.get(uid) == n for uid, n in expected.items())


def summary(what: str, unit: str, rates: dict[str, list[float]], out: TextIO) -> None:
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(
        f"{what}: on median {on:.1f} {unit}, off median {off:.1f} {unit}, "
        f"ratio on/off {on / off:.3f} (goal >= 0.97)",
        file=out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="ORM^O01 per HL7 round")
    parser.add_argument("--instances", type=int, default=500, help="instances per ingest round")
    parser.add_argument("--studies", type=int, default=10, help="studies per ingest round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp:
        root = Path(tmp)
        load = make_load(root / "load", args.studies, args.instances // args.studies)
        with children_output_to(root / "children.log") as out:
            print(
                f"on: METRICS_ENABLED=true LOG_FORMAT=json, /metrics scraped every "
                f"{SCRAPE_EVERY:.0f} s; off: METRICS_ENABLED=false LOG_FORMAT=text; "
                f"LOG_LEVEL=INFO; PostgreSQL; {args.rounds} rounds each, alternating",
                file=out,
            )
            hl7 = hl7_rounds(args.server, args.messages, args.rounds, out)
            ingest: dict[str, list[float]] = {"on": [], "off": []}
            total = sum(s.instance_count for s in load)
            for n in range(args.rounds):
                for mode in ("off", "on") if n % 2 == 0 else ("on", "off"):
                    rate, scrapes = ingest_round(
                        root / f"orthanc-{n}-{mode}", load, mode, args.server, args.stable_age
                    )
                    ingest[mode].append(rate)
                    print(
                        f"  ingest round {n + 1} {mode:3}: {rate:7.1f} instances/s "
                        f"({args.studies} studies, {total} instances, C-STORE to registered)"
                        + (f", {scrapes} scrapes" if mode == "on" else ""),
                        file=out,
                    )
            summary(f"HL7 intake ({args.messages} ORM^O01, 1 connection)", "messages/s", hl7, out)
            summary("ingest (C-STORE to registered)", "instances/s", ingest, out)
            log_lines = (root / "children.log").read_text(errors="replace").count("\n")
            print(f"(the sidecars and Orthancs wrote {log_lines} log lines)", file=out)


if __name__ == "__main__":
    main()
