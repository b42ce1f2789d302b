"""Pages benchmark (issue 18): how soon a study that became ready shows in an open worklist page,
and how long the worklist page takes with 10,000 studies waiting.

A stack (Orthanc with the plugin and a stable age of 1 s, the sidecar in this process on a real
socket; tests/support/stack.py) on a fresh PostgreSQL database (SQLite with --sqlite), a
radiologist logged in through the login form in headless Chromium (tests/browser/app_session.mjs
through tests/support/app_browser.py, the sidecar's own front):

(a) live row: with /app/worklist open, one study of one CT instance at a time is sent by dcmtk
    storescu; the browser waits for its accession number in the rows (waitForText: the event
    stream's study event refreshes the rows fragment; no reload). Two figures per study:
    - from the study being ready: Study.images_received_at, written in the transaction that
      registers the stable study as COMPLETED (ms before its commit), to the row visible;
    - from storescu's end (includes Orthanc's stable age, 1 s, and the sidecar's polling).
(b) worklist load: 10,000 studies waiting, written straight into the database (bench/reading.py's
    seed: a tenth STAT, a fifth URGENT, half of them held by readers; turnaround targets set
    beyond reach, so that no overdue sweep runs meanwhile); then
    - GET /app/worklist (the full HTML page, first 50 rows) with the session cookie, timed at
      the client (httpx, one request at a time);
    - in Chromium: navigation to /app/worklist until the load event, then the rows' caption
      visible (server-rendered rows: visible at load).

Prints figures and, last, one JSON line summarising them (milliseconds).

    .venv/bin/python bench/pages.py [--studies 30] [--waiting 10000] [--requests 100] [--sqlite]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
from reading import seed_queue
from sidecar_process import SERVER, _fresh_database  # puts tests/support on the path
from sqlmodel import Session, col, select

from sidecar.core.database import make_engine
from sidecar.studies.models import Study

from app_browser import run_app_session
from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from figures import percentile  # bench/, beside this script
from stack import Stack

PASSWORD = "bench-user-password-1"


def stats(values_s: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values_s),
        "p50": round(percentile(values_s, 0.5) * 1000, 1),
        "p99": round(percentile(values_s, 0.99) * 1000, 1),
        "max": round(max(values_s) * 1000, 1),
    }


def show(label: str, figures: dict[str, float | int]) -> None:
    print(
        f"  {label}: {figures['n']} runs, p50 {figures['p50']:7.1f} ms, "
        f"p99 {figures['p99']:7.1f} ms, max {figures['max']:7.1f} ms"
    )


def ready_times(database_url: str, accessions: list[str]) -> dict[str, float]:
    """Each study's images_received_at, as a Unix time."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.exec(select(Study).where(col(Study.accession_number).in_(accessions)))
            return {
                str(study.accession_number): study.images_received_at.replace(
                    tzinfo=study.images_received_at.tzinfo or UTC
                ).timestamp()
                for study in rows
                if study.images_received_at is not None
            }
    finally:
        engine.dispose()


def live_rows(stack: Stack, login: dict[str, Any], work: Path, count: int) -> dict[str, Any]:
    accessions = [f"PGB{n:05d}" for n in range(1, count + 1)]
    loads = [
        make_study(
            work / accession,
            series_count=1,
            instances_per_series=1,
            accession_number=accession,
            patient_id=f"PGB-{n:05d}",
        )
        for n, accession in enumerate(accessions, 1)
    ]
    sent_at: dict[str, float] = {}  # storescu's end; the browser's wait starts ms after it
    steps: list[dict[str, Any]] = [login, {"goto": {"path": "/app/worklist", "status": 200}}]
    hooks: dict[str, Callable[[], object]] = {}
    for accession, load in zip(accessions, loads, strict=True):

        def send(accession: str = accession, files: Any = load.files) -> None:
            assert storescu_dcmtk(files, *stack.dicom_address).all_success
            sent_at[accession] = time.time()

        hooks[accession] = send
        steps += [
            {"pause": accession},
            {"waitForText": accession, "within": "#worklist-rows", "timeoutMs": 60_000},
        ]
    assert stack.sidecar is not None
    report = run_app_session(
        stack.sidecar.url,
        steps,
        timeout=60.0 + 20 * count,
        artifacts_dir=work / "browser",
        hooks=hooks,
    )
    waits = [s["waitedMs"] / 1000 for s in report["steps"] if s["name"].startswith("waitForText")]
    visible_at = {
        accession: sent_at[accession] + waited
        for accession, waited in zip(accessions, waits, strict=True)
    }
    ready = ready_times(stack.settings.database_url, accessions)
    return {
        "from_ready": stats([visible_at[a] - ready[a] for a in accessions]),
        "from_storescu_end": stats([visible_at[a] - sent_at[a] for a in accessions]),
    }


def worklist_load(
    stack: Stack, login: dict[str, Any], headers: dict[str, str], waiting: int, requests: int
) -> dict[str, Any]:
    assert stack.sidecar is not None
    with httpx.Client(base_url=stack.sidecar.url, timeout=60, headers=headers) as http:
        total = http.get("/api/reading-worklist").json()["total"]
        assert total >= waiting, total
        for _ in range(10):  # warm-up
            http.get("/app/worklist").raise_for_status()
        html = []
        for _ in range(requests):
            started = time.perf_counter()
            answer = http.get("/app/worklist")
            html.append(time.perf_counter() - started)
            assert answer.status_code == 200 and 'id="worklist-rows"' in answer.text
    caption = f"Studies waiting to be read: {total}"
    steps: list[dict[str, Any]] = [login]
    runs = max(10, requests // 3)
    for _ in range(runs + 3):  # the first three warm the browser's cache of the scripts
        steps += [{"goto": "/app/worklist"}, {"expectText": caption, "within": "caption"}]
    report = run_app_session(stack.sidecar.url, steps, timeout=600)
    timed = report["steps"][1:]
    pairs = [timed[i]["ms"] + timed[i + 1]["ms"] for i in range(0, len(timed), 2)][3:]
    return {
        "total": total,
        "html": stats(html),
        "browser_rows_visible": stats([ms / 1000 for ms in pairs]),
    }


def run(database_url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(work / "stack", database_url)
    # No study of the seeded queue overdue: the overdue sweep (thousands of escalations at
    # once, in this process) would run during the measurements. bench/reading.py times
    # overdue=true.
    never = 10**7
    stack.settings = stack.settings.model_copy(
        update={
            "reading_target_minutes_stat": never,
            "reading_target_minutes_urgent": never,
            "reading_target_minutes_routine": never,
        }
    )
    stack.start_orthanc()
    try:
        stack.start_sidecar()
        made = stack.api(
            "POST",
            "/api/users",
            json={"username": "rad.pages", "password": PASSWORD, "role": "radiologist"},
        )
        made.raise_for_status()
        login = {"login": {"username": "rad.pages", "password": PASSWORD}}
        live = live_rows(stack, login, work / "dicom", args.studies)
        seed_queue(database_url, args.waiting, [int(made.json()["id"])])
        token = stack.login("rad.pages", PASSWORD)
        load = worklist_load(
            stack, login, {"Authorization": f"Bearer {token}"}, args.waiting, args.requests
        )
        return {"live_row": live, "worklist_load": load}
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=30, help="studies sent for (a)")
    parser.add_argument("--waiting", type=int, default=10_000, help="studies waiting for (b)")
    parser.add_argument("--requests", type=int, default=100, help="GET /app/worklist timed")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()
    kind = "SQLite" if args.sqlite else "PostgreSQL"
    with (
        tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp,
        _fresh_database(args.server, tmp, args.sqlite) as database_url,
    ):
        figures = run(database_url, Path(tmp), args)
    live, load = figures["live_row"], figures["worklist_load"]
    print(f"pages, {kind}, sidecar in this process (uvicorn thread), Orthanc stable age 1 s")
    print(f"(a) a study's row appearing in an open /app/worklist, {args.studies} studies:")
    show("from ready (images_received_at)", live["from_ready"])
    show("from storescu's end", live["from_storescu_end"])
    print(f"(b) /app/worklist with {load['total']} studies waiting:")
    show("GET /app/worklist, full HTML", load["html"])
    show("Chromium: navigation to rows visible", load["browser_rows_visible"])
    print(json.dumps({"benchmark": "pages", "database": kind, **figures}))


if __name__ == "__main__":
    main()
