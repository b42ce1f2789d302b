"""Reading benchmark (issue 14): the reading worklist with 10,000 studies waiting, the
assignment decision per study, and the PDF of a one-page report.

The sidecar runs in its own process (`python -m sidecar`) on a fresh PostgreSQL database (or
SQLite with --sqlite). The waiting studies are written straight into its database (a tenth of
them STAT, a fifth URGENT, over 3,000 patients, half held by one of five radiologists); then:

- GET /api/reading-worklist (first page of 50, then `assignedTo=me`, then `overdue=true`),
  one request at a time, timed at the client;
- the assignment decision (sidecar.reading.rules.choose_reader: rules read, pool members'
  open work counted, the same patient's readers looked up) for studies of that queue, in this
  process against the same database, three rules of five radiologists;
- GET /api/reports/{id}/rendering?format=pdf of a signed one-page report.

    .venv/bin/python bench/reading.py [--studies 10000] [--requests 200] [--sqlite]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa
from sidecar_process import ADMIN_PASSWORD, SERVER, login, running_sidecar  # puts tests/ on path
from sqlmodel import Session, col, select

from sidecar.core.database import make_engine
from sidecar.core.models import table_of
from sidecar.reading.models import StudyReading
from sidecar.reading.rules import choose_reader
from sidecar.studies.models import Study

from figures import percentile  # bench/, beside this script

PASSWORD = "bench-user-password-1"
UID_ROOT = "1.2.826.0.1.3680043.8.498.66"


def seed_queue(database_url: str, count: int, readers: list[int]) -> None:
    rng = random.Random(14)
    now = datetime.now(UTC)
    studies, readings = [], []
    for n in range(1, count + 1):
        ready = now - timedelta(minutes=rng.randint(0, 3000))
        draw = rng.random()
        priority = "STAT" if draw < 0.1 else "URGENT" if draw < 0.3 else "ROUTINE"
        studies.append(
            {
                "study_instance_uid": f"{UID_ROOT}.{n}",
                "accession_number": f"RB{n:08d}",
                "patient_id": f"BENCH-{rng.randint(1, 3000):05d}",
                "issuer_of_patient_id": "HOSP",
                "modalities": rng.choice(["CT", "MR", "CR", "US"]),
                "body_part": rng.choice(["HEAD", "CHEST", "ABDOMEN", "KNEE"]),
                "series_count": 1,
                "instance_count": 1,
                "status": "COMPLETED",
                "priority": priority,
                "created_at": ready,
                "updated_at": ready,
                "images_received_at": ready,
            }
        )
        readings.append((n, ready, rng.choice(readers) if rng.random() < 0.5 else None))
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(table_of(Study)), studies)
            rows = connection.execute(sa.select(col(Study.study_instance_uid), col(Study.id)))
            ids: dict[str, int | None] = {uid: study_id for uid, study_id in rows}
            connection.execute(
                sa.insert(table_of(StudyReading)),
                [
                    {
                        "study_id": ids[f"{UID_ROOT}.{n}"],
                        "ready_at": ready,
                        "assigned_to_id": holder,
                        "assigned_at": ready if holder else None,
                        "overdue_level": 0,
                        "version": 1,
                    }
                    for n, ready, holder in readings
                ],
            )
    finally:
        engine.dispose()


def timed(call: Callable[[], object], times: int) -> list[float]:
    values = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        values.append(time.perf_counter() - started)
    return values


def show(label: str, values: list[float]) -> None:
    print(
        f"  {label}: {len(values)} runs, p50 {percentile(values, 0.5) * 1000:7.1f} ms, "
        f"p99 {percentile(values, 0.99) * 1000:7.1f} ms"
    )


def get(http: httpx.Client, path: str, headers: dict[str, str], **params: str) -> httpx.Response:
    response = http.get(path, headers=headers, params=params)
    response.raise_for_status()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10_000, help="studies waiting")
    parser.add_argument("--requests", type=int, default=200, help="requests per figure")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()

    with (
        running_sidecar(
            args.server, sqlite=args.sqlite, MLLP_ENABLED="false", WORKLIST_ENABLED="false"
        ) as sidecar,
        httpx.Client(base_url=sidecar.url, timeout=60) as http,
    ):
        admin = login(sidecar.url, "admin", ADMIN_PASSWORD)
        readers = []
        for n in range(5):
            created = http.post(
                "/api/users",
                headers=admin,
                json={"username": f"rad.{n}", "password": PASSWORD, "role": "radiologist"},
            )
            created.raise_for_status()
            readers.append(int(created.json()["id"]))
        rules: dict[str, dict[str, object]] = {
            "CT": {"modality": "CT", "pool": readers[:3]},
            "MR STAT": {"modality": "MR", "priority": "STAT", "pool": readers[2:]},
            "rest": {"pool": readers},
        }
        for name, rule in rules.items():
            http.post(
                "/api/assignment-rules", headers=admin, json={"name": name, **rule}
            ).raise_for_status()
        seed_queue(sidecar.database_url, args.studies, readers)
        reader = login(sidecar.url, "rad.0", PASSWORD)
        total = get(http, "/api/reading-worklist", reader).json()["total"]
        kind = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"reading worklist, {total} studies waiting, sidecar in its own process, {kind}")
        for _ in range(20):  # warm-up
            get(http, "/api/reading-worklist", reader)
        show(
            "first page (50)",
            timed(lambda: get(http, "/api/reading-worklist", reader), args.requests),
        )
        show(
            "assignedTo=me",
            timed(
                lambda: get(http, "/api/reading-worklist", reader, assignedTo="me"), args.requests
            ),
        )
        show(
            "overdue=true",
            timed(
                lambda: get(http, "/api/reading-worklist", reader, overdue="true"), args.requests
            ),
        )

        engine = make_engine(sidecar.database_url)
        try:
            with Session(engine) as session:
                sample = list(
                    session.exec(select(Study).order_by(col(Study.id)).limit(args.requests))
                )
                decisions = []
                for study in sample:
                    started = time.perf_counter()
                    choose_reader(session, study)
                    decisions.append(time.perf_counter() - started)
        finally:
            engine.dispose()
        show("assignment decision per study (in process)", decisions)

        study_id = sample[0].id
        http.post(f"/api/studies/{study_id}/claim", headers=reader, json={"takeOver": True})
        created = http.post(
            "/api/reports",
            headers=reader,
            json={
                "studyId": study_id,
                "technique": "CT of the head without contrast.",
                "findings": "No acute intracranial haemorrhage. Ventricles normal in size.",
                "impression": "No acute intracranial abnormality.",
            },
        )
        created.raise_for_status()
        report_id = created.json()["id"]
        http.post(f"/api/reports/{report_id}/sign", headers=reader).raise_for_status()
        path = f"/api/reports/{report_id}/rendering"
        for _ in range(10):
            get(http, path, reader, format="pdf")
        show(
            "PDF of a one-page report",
            timed(lambda: get(http, path, reader, format="pdf"), args.requests),
        )


if __name__ == "__main__":
    main()
