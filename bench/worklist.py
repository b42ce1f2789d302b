"""Worklist benchmark: C-FIND latency with 10,000 scheduled items, the plugin's in-memory cache
(plugin/worklist_cache.py) against Orthanc's ModalityWorklists plugin, both serving the SAME
directory of files written by sidecar.worklist.directory, in the same run.

Both Orthancs run side by side; every round queries each once, alternating which goes first, so
drift on a noisy machine hits both alike. The client is pynetdicom with TCP_NODELAY on its socket
(Orthanc is started with TCP_NODELAY=1); each C-FIND runs on a fresh association and only the
C-FIND itself is timed, up to its final status, every answer decoded. Queries ask for every
attribute the worklist offers, as a modality does. Both must return the same number of items.

Query shapes: one accession number (1 item); one modality on one day (~300); one modality over
all days (2,500); and one accession number right after an item was published (the cache reloads
that one file; ModalityWorklists always reads them all).

    python bench/worklist.py            # or: --items 10000 --rounds 30
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from figures import percentile  # bench/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, _config  # noqa: E402
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]  # noqa: E402

from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess, WorklistMechanism  # noqa: E402
from sidecar.worklist.directory import WorklistDirectory  # noqa: E402
from sidecar.worklist.items import WorklistItem  # noqa: E402

from dicom_senders import _nodelay_handlers  # noqa: E402
from stack import free_port  # noqa: E402

# pynetdicom pretty-prints every answer for its debug log, logging enabled or not: about 1.3 ms
# of client CPU per answer here, more than Orthanc spends on it. Off, so the server is measured.
_config.LOG_RESPONSE_IDENTIFIERS = False

TZ = ZoneInfo("Europe/Brussels")
DAYS = 10
# Shares of the items per modality: CT on one day is ~300 items, US over all days 2,500.
MODALITIES = [("CT", 30), ("MR", 25), ("US", 25), ("DX", 20)]
FIRST_DAY = datetime(2024, 6, 3, 7, 0, tzinfo=TZ)
MECHANISMS: dict[WorklistMechanism, str] = {
    "python": "plugin cache",
    "modality-worklists": "ModalityWorklists",
}


def make_items(count: int, rng: random.Random) -> list[WorklistItem]:
    modalities = [m for m, share in MODALITIES for _ in range(share)]
    items = []
    for n in range(count):
        modality = modalities[n % len(modalities)]
        start = FIRST_DAY + timedelta(days=n % DAYS, minutes=rng.randrange(0, 12 * 60))
        items.append(
            WorklistItem(
                key=str(n),
                accession_number=f"A{n:08d}",
                requested_procedure_id=f"RP{n:08d}",
                requested_procedure_description=f"{modality} examination",
                study_instance_uid=f"1.2.826.0.1.3680043.10.3.{n}",
                patient_id=f"P{rng.randrange(count // 2):07d}",
                issuer_of_patient_id="HOSPITAL",
                patient_name=f"PATIENT^{n}",
                patient_birth_date=None,
                patient_sex=rng.choice("MFO"),
                referring_physician="HOUSE^GREGORY",
                modality=modality,
                scheduled_station_aet=f"{modality}0{n % 2 + 1}",
                scheduled_start=start,
                step_description="Scheduled step",
                step_id=f"S{n:08d}",
            )
        )
    return items


def full_query(**constraints: str) -> Dataset:
    """All return keys, as a modality asks; ``Step_`` keywords go in the step item."""
    ds = Dataset()
    for keyword in (
        "AccessionNumber",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "RequestedProcedurePriority",
        "StudyInstanceUID",
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, constraints.get(keyword, ""))
    step = Dataset()
    for keyword in (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
    ):
        setattr(step, keyword, constraints.get(f"Step_{keyword}", ""))
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def timed_find(port: int, query: Dataset) -> tuple[float, int]:
    """Seconds for one C-FIND (association not counted) and the number of answers."""
    ae = AE(ae_title="BENCHSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC", evt_handlers=_nodelay_handlers())
    if not assoc.is_established:
        raise SystemExit(f"association to port {port} refused")
    try:
        answers = 0
        started = time.perf_counter()
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if "Status" not in status:
                raise SystemExit(f"C-FIND on port {port}: no status (association aborted)")
            if identifier is not None and int(status.Status) in (0xFF00, 0xFF01):
                answers += 1
            elif int(status.Status) != 0x0000:
                raise SystemExit(f"C-FIND on port {port}: status 0x{int(status.Status):04X}")
        return time.perf_counter() - started, answers
    finally:
        assoc.release()
        ae.shutdown()


@dataclass
class Shape:
    name: str
    rounds: int
    make_query: Callable[[int], Dataset]
    expected: int
    before: Callable[[int], None] = lambda _: None
    seconds: dict[str, list[float]] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the 1-item shapes")
    args = parser.parse_args()
    rng = random.Random(3)
    items = make_items(args.items, rng)
    per_day_ct = sum(1 for i in items if i.modality == "CT" and i.scheduled_start.day == 3)

    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        root = Path(tmp)
        # Not durable: the bench measures C-FIND, not fsync (a tmp directory needs none).
        directory = WorklistDirectory(root / "worklists", TZ, durable=False)
        started = time.perf_counter()
        directory.replace_all(items)
        print(
            f"{args.items} items written in {time.perf_counter() - started:.1f} s "
            f"({DAYS} days, {', '.join(m for m, _ in MODALITIES)}); "
            "both mechanisms serve that one directory"
        )
        orthancs: dict[str, OrthancProcess] = {}
        try:
            for mechanism in MECHANISMS:
                orthancs[mechanism] = OrthancProcess(
                    OrthancLayout(
                        work_dir=root / mechanism,
                        http_port=free_port(),
                        dicom_port=free_port(),
                        worklist_dir=root / "worklists",
                        worklist_mechanism=mechanism,
                        with_plugin=mechanism == "python",
                    )
                )
                orthancs[mechanism].start(timeout=120)

            def republish(n: int) -> None:
                # The cache must reload one changed file before answering.
                changed = items[n % len(items)]
                directory.publish(replace(changed, step_description=f"changed {n}"))

            shapes = [
                Shape(
                    "by accession number",
                    args.rounds,
                    lambda n: full_query(AccessionNumber=rng.choice(items).accession_number),
                    1,
                ),
                Shape(
                    "modality + one day",
                    max(5, args.rounds // 2),
                    lambda n: full_query(
                        Step_Modality="CT", Step_ScheduledProcedureStepStartDate="20240603"
                    ),
                    per_day_ct,
                ),
                Shape(
                    "modality, all days",
                    max(3, args.rounds // 5),
                    lambda n: full_query(Step_Modality="US"),
                    sum(1 for i in items if i.modality == "US"),
                ),
                Shape(
                    "accession after a publish",
                    args.rounds,
                    lambda n: full_query(AccessionNumber=items[n % len(items)].accession_number),
                    1,
                    before=republish,
                ),
            ]
            for shape in shapes:
                run_shape(shape, orthancs)
        finally:
            for orthanc in orthancs.values():
                orthanc.stop()
    report(shapes)


def run_shape(shape: Shape, orthancs: dict[str, OrthancProcess]) -> None:
    order = list(MECHANISMS)
    for mechanism in order:  # warm-up: first association, page cache, Python imports
        timed_find(orthancs[mechanism].layout.dicom_port, shape.make_query(0))
    for n in range(shape.rounds):
        shape.before(n)
        query = shape.make_query(n)
        for mechanism in order if n % 2 == 0 else order[::-1]:
            seconds, answers = timed_find(orthancs[mechanism].layout.dicom_port, query)
            if answers != shape.expected:
                raise SystemExit(
                    f"{shape.name}: {MECHANISMS[mechanism]} answered {answers} items, "
                    f"expected {shape.expected}"
                )
            shape.seconds.setdefault(mechanism, []).append(seconds)


def report(shapes: list[Shape]) -> None:
    print(
        f"{'query':27} {'items':>6} {'rounds':>6}  {'plugin cache p50/p99 ms':>24}  "
        f"{'ModalityWorklists p50/p99 ms':>29}  {'ratio p50':>9} {'p99':>6}"
    )
    for shape in shapes:
        ours, theirs = shape.seconds["python"], shape.seconds["modality-worklists"]
        figures = [
            percentile(values, fraction) * 1000
            for values in (ours, theirs)
            for fraction in (0.5, 0.99)
        ]
        print(
            f"{shape.name:27} {shape.expected:>6} {len(ours):>6}  "
            f"{figures[0]:>11.1f} / {figures[1]:>9.1f}  {figures[2]:>14.1f} / {figures[3]:>11.1f}"
            f"  {figures[0] / figures[2]:>9.3f} {figures[1] / figures[3]:>6.3f}"
        )
    print("ratio = plugin cache / ModalityWorklists (target: at most 1.0); p99 of few rounds ~ max")


if __name__ == "__main__":
    main()
