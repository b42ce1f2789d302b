"""AI quality benchmark (issue 19): a stable study to its `quality` Structured Report stored in
Orthanc, for studies of 1, 50 and 300 images (seed 002: under 5 minutes; goal: p95 under 60 s).

The full stack on loopback (Orthanc with the plugin, the sidecar in this process, its runner
thread; AI_AUTO_ANALYZERS=quality). Studies of 512x512 16-bit CT images are sent one at a time
over C-STORE (dcmtk storescu), each waited for before the next, so every figure is one study's
own time, not a queue's:

- analysis: from the registration of the stable study (the auto analysis asked for, in its
  transaction) to the task COMPLETED (its report stored in Orthanc first): the sidecar's part;
- from stable: from the end of the C-STORE plus StableAge (when Orthanc may call the study
  stable) to COMPLETED: what a department waits, Orthanc's whole-second stability check and the
  registration included.

Both ends are the sidecar's own timestamps (the analysis' and the task's rows); completion is
looked for in its database every 100 ms, which costs the runner nothing, and the stored report
is checked to name every image of the study as its evidence (each one was analysed).

    .venv/bin/python bench/ai_quality.py [--sizes 1,50,300] [--studies 10] [--database-url ...]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydicom
from sqlmodel import Session, col, select

from figures import percentile  # bench/, beside this script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from sidecar.analyses.models import ENDED, Analysis, AnalysisStatus, AnalysisTask  # noqa: E402
from sidecar.core.database import make_engine  # noqa: E402
from sidecar.studies.models import Study  # noqa: E402

from dicom_factory import make_study  # noqa: E402
from dicom_senders import storescu_dcmtk  # noqa: E402
from stack import Stack  # noqa: E402

STABLE_AGE = 2


def one_study(stack: Stack, folder: Path, images: int) -> tuple[float, float]:
    """Sends a study of `images` images; (analysis seconds, seconds from stable)."""
    study = make_study(
        folder, series_count=1, instances_per_series=images, modality="CT", rows=512, columns=512
    )
    result = storescu_dcmtk(study.files, *stack.dicom_address, timeout=600)
    if not result.all_success:
        raise SystemExit(f"C-STORE failed: {result.failed[:3]}")
    stable_at = datetime.now(UTC) + timedelta(seconds=STABLE_AGE)
    engine = make_engine(stack.settings.database_url)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            with Session(engine) as session:
                row = session.exec(
                    select(Analysis, AnalysisTask)
                    .join(Study, col(Study.id) == col(Analysis.study_id))
                    .join(AnalysisTask, col(AnalysisTask.analysis_id) == col(Analysis.id))
                    .where(Study.study_instance_uid == study.study_instance_uid)
                ).first()
            if row is not None and row[1].status in ENDED:
                analysis, task = row
                if task.status != AnalysisStatus.COMPLETED or task.ended_at is None:
                    raise SystemExit(f"the analysis ended {task.status}: {task.reason}")
                evidence = evidence_count(stack, task.report_sop_instance_uid or "")
                if evidence != images:
                    raise SystemExit(f"the report names {evidence} images of {images}")
                return (
                    (task.ended_at - analysis.created_at).total_seconds(),
                    (task.ended_at - stable_at).total_seconds(),
                )
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise SystemExit(f"no quality report for a study of {images} images after 900 s")


def evidence_count(stack: Stack, report_uid: str) -> int:
    """How many images the stored report names as its evidence (each one analysed)."""
    found = httpx.post(f"{stack.orthanc.url}/tools/lookup", content=report_uid, timeout=10)
    [instance] = [r["ID"] for r in found.json() if r["Type"] == "Instance"]
    content = httpx.get(f"{stack.orthanc.url}/instances/{instance}/file", timeout=30).content
    report = pydicom.dcmread(io.BytesIO(content))
    return sum(
        len(series.ReferencedSOPSequence)
        for study in report.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,50,300", help="images per study, comma-separated")
    parser.add_argument("--studies", type=int, default=10, help="studies of each size")
    parser.add_argument("--database-url", default="", help="sidecar database (default SQLite)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-ai-quality-") as tmp:
        root = Path(tmp)
        stack = Stack(
            root / "stack",
            args.database_url or f"sqlite:///{root / 'sidecar.db'}",
            stable_age=STABLE_AGE,
        )
        stack.settings = stack.settings.model_copy(update={"ai_auto_analyzers": "quality"})
        stack.start_orthanc()
        stack.start_sidecar()
        print(
            f"{args.studies} studies of each size, 512x512 16-bit CT, one at a time, "
            f"StableAge {STABLE_AGE} s, {'PostgreSQL' if args.database_url else 'SQLite'}"
        )
        try:
            for size in sizes:
                analysis, from_stable = [], []
                for n in range(args.studies):
                    seconds = one_study(stack, root / f"s{size}-{n}", size)
                    analysis.append(seconds[0])
                    from_stable.append(seconds[1])
                print(
                    f"  {size:4d} images: analysis p50 {percentile(analysis, 0.5):6.2f} s, "
                    f"p95 {percentile(analysis, 0.95):6.2f} s; from stable p50 "
                    f"{percentile(from_stable, 0.5):6.2f} s, p95 "
                    f"{percentile(from_stable, 0.95):6.2f} s (goal p95 < 60 s)"
                )
        finally:
            stack.close()


if __name__ == "__main__":
    main()
