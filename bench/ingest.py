"""Ingest benchmark: C-STORE throughput of plain Orthanc against the full stack, and how long a
study takes to appear in the sidecar after Orthanc's StableAge has expired.

Each round sends the same kind of load (K studies of N/K instances, one dcmtk storescu association
per study, TCP_NODELAY=1 on both ends) to (a) Orthanc as shipped, with DICOMweb only, and (b) the
full stack: Orthanc with the plugin and the DICOM ingress filter, plus the sidecar. Rounds
alternate a, b, a, b, ... so drift on a noisy machine hits both alike. Every round starts on empty
storage and an empty sidecar database; start-up is not timed.

Latency of a study = (the sidecar's commit that makes GET /api/studies list it with all its
                      instances)
                     - (end of its C-STORE + StableAge).
It includes Orthanc's own stability check, which runs about once a second. The sidecar runs in
this process, so the commit's moment is recorded here, as it happens; after the last C-STORE one
thread checks that GET /api/studies lists every study with all its instances. Polling that list
every 20 ms during the C-STOREs instead cost the sidecar 1.1-1.6 ms of CPU per instance
received, about what Orthanc spends storing one (1.1-1.4 ms), and took a fifth off the full
stack's throughput on two cores: the benchmark measured its own polling.

    make bench            # or: .venv/bin/python bench/ingest.py --instances 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from figures import percentile  # bench/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from sidecar.core.dependencies import services_of  # noqa: E402
from sidecar.ingest.sync import OrthancSync  # noqa: E402
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess  # noqa: E402

from dicom_factory import GeneratedStudy, make_study  # noqa: E402
from dicom_senders import storescu_dcmtk  # noqa: E402
from stack import Stack, free_port  # noqa: E402


@dataclass
class RoundResult:
    kind: str
    instances: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    orthanc_part: list[float] = field(default_factory=list)
    sidecar_part: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def make_load(directory: Path, studies: int, per_study: int) -> list[GeneratedStudy]:
    return [
        make_study(
            directory / f"study{n}",
            series_count=2,
            instances_per_series=per_study // 2,
            rows=128,
            columns=128,
        )
        for n in range(studies)
    ]


def send(load: list[GeneratedStudy], port: int) -> tuple[float, list[float]]:
    """Sends each study over its own association; returns total seconds and each study's end."""
    ends: list[float] = []
    started = time.perf_counter()
    for study in load:
        result = storescu_dcmtk(study.files, "127.0.0.1", port, "ORTHANC", timeout=300)
        if not result.all_success:
            raise SystemExit(f"C-STORE failed: {result.failed[:3]}")
        ends.append(time.perf_counter())
    return time.perf_counter() - started, ends


def plain_round(work: Path, load: list[GeneratedStudy], stable_age: int) -> RoundResult:
    layout = OrthancLayout(
        work_dir=work,
        http_port=free_port(),
        dicom_port=free_port(),
        stable_age=stable_age,
        with_plugin=False,
        extra={"LuaScripts": []},
    )
    orthanc = OrthancProcess(layout)
    orthanc.start()
    try:
        seconds, _ = send(load, layout.dicom_port)
    finally:
        orthanc.stop()
    return RoundResult("plain", sum(s.instance_count for s in load), seconds)


def stack_round(
    work: Path, load: list[GeneratedStudy], stable_age: int, database_url: str
) -> RoundResult:
    stack = Stack(
        work,
        database_url or f"sqlite:///{work / 'sidecar.db'}",
        stable_age=stable_age,
        reconcile_interval=5.0,
    )
    stack.start_orthanc()
    stack.start_sidecar()
    latencies: list[float] = []
    notices: dict[str, float] = {}
    assert stack.sidecar is not None
    sync = services_of(stack.sidecar.app).get(OrthancSync)
    original_enqueue = sync.enqueue

    def record_notice(orthanc_ids: Iterable[str], source: str) -> None:
        ids = list(orthanc_ids)
        if source == "plugin":
            for orthanc_id in ids:
                notices.setdefault(orthanc_id, time.perf_counter())
        original_enqueue(ids, source)

    sync.enqueue = record_notice  # type: ignore[method-assign]  # timing the notices
    visible: dict[str, float] = {}
    original_visible = sync._visible

    def record_visible(orthanc_id: str) -> None:
        visible[orthanc_id] = time.perf_counter()  # the last registration: all its instances
        original_visible(orthanc_id)

    sync._visible = record_visible  # type: ignore[method-assign]  # timing the commits
    stable_at: dict[str, float] = {}
    expected = {s.study_instance_uid: s.instance_count for s in load}
    try:
        stack.api("GET", "/api/studies")  # log in before timing
        started = time.perf_counter()
        for study in load:
            result = storescu_dcmtk(study.files, *stack.dicom_address, timeout=300)
            if not result.all_success:
                raise SystemExit(f"C-STORE failed: {result.failed[:3]}")
            stable_at[study.study_instance_uid] = time.perf_counter() + stable_age
        seconds = time.perf_counter() - started
        by_uid = _listed(stack, expected)
        sidecar_part = list(sync.status.notice_to_visible)
        orthanc_part = []
        for uid, at in stable_at.items():
            if by_uid.get(uid) in notices:
                orthanc_part.append(notices[by_uid[uid]] - at)
            if by_uid.get(uid) in visible:
                latencies.append(visible[by_uid[uid]] - at)
    finally:
        stack.close()
    if len(latencies) != len(load):
        raise SystemExit(f"only {len(latencies)} of {len(load)} studies appeared in the sidecar")
    return RoundResult(
        "stack",
        sum(s.instance_count for s in load),
        seconds,
        latencies,
        orthanc_part=orthanc_part,
        sidecar_part=sidecar_part,
    )


def _listed(stack: Stack, expected: dict[str, int]) -> dict[str, str]:
    """Waits until GET /api/studies lists every study with all its instances; returns each
    one's Orthanc id by Study Instance UID."""
    deadline = time.perf_counter() + 180
    while True:
        studies = stack.studies()
        counts = {s["studyInstanceUID"]: s["instanceCount"] for s in studies}
        if all(counts.get(uid) == n for uid, n in expected.items()):
            return {s["studyInstanceUID"]: s["orthancId"] for s in studies}
        if time.perf_counter() > deadline:
            missing = sum(counts.get(uid) != n for uid, n in expected.items())
            raise SystemExit(f"{missing} of {len(expected)} studies not in the sidecar after 180 s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances per round")
    parser.add_argument("--studies", type=int, default=10, help="studies per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each kind")
    parser.add_argument("--stable-age", type=int, default=2)
    parser.add_argument("--database-url", default="", help="sidecar database (default SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        load = make_load(root / "load", args.studies, args.instances // args.studies)
        total = sum(s.instance_count for s in load)
        print(
            f"load: {args.studies} studies, {total} instances of 128x128 CT, "
            f"StableAge {args.stable_age} s, {args.rounds} rounds each, alternating"
        )
        results: list[RoundResult] = []
        for n in range(args.rounds):
            for kind in ("plain", "stack"):
                work = root / f"{kind}{n}"
                result = (
                    plain_round(work, load, args.stable_age)
                    if kind == "plain"
                    else stack_round(work, load, args.stable_age, args.database_url)
                )
                results.append(result)
                print(f"  round {n + 1} {kind:5}: {result.rate:7.1f} instances/s")

    plain = [r.rate for r in results if r.kind == "plain"]
    full = [r.rate for r in results if r.kind == "stack"]
    latencies = [x for r in results for x in r.latencies]
    sidecar = [x for r in results for x in r.sidecar_part]
    orthanc = [x for r in results for x in r.orthanc_part]
    print(f"(a) plain Orthanc : median {statistics.median(plain):7.1f} instances/s")
    print(f"(b) full stack    : median {statistics.median(full):7.1f} instances/s")
    print(
        f"ratio b/a         : {statistics.median(full) / statistics.median(plain):.3f} "
        "(target >= 0.95)"
    )
    print(
        f"stable->registered: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
        f"over {len(latencies)} studies (target p99 <= 1000 ms)"
    )
    print(
        f"  of which Orthanc: StableAge expiry -> plugin notice p50 "
        f"{percentile(orthanc, 0.5) * 1000:.0f} ms, p99 {percentile(orthanc, 0.99) * 1000:.0f} ms"
        " (Orthanc's whole-second stability check)"
    )
    print(
        f"  of which sidecar: plugin notice -> visible p50 {percentile(sidecar, 0.5) * 1000:.0f} "
        f"ms, p99 {percentile(sidecar, 0.99) * 1000:.0f} ms over {len(sidecar)} notices"
    )


if __name__ == "__main__":
    main()
