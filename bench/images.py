"""Images benchmark: upload throughput through the API and STOW-RS through both viewer fronts
against Orthanc's own `POST /instances`, and study thumbnails cold and cached.

Orthanc (with the plugin and the DICOM ingress filter) and the sidecar run for real (the test
stack, the sidecar in this process; SQLite unless --postgresql). A study is sent with dcmtk and
registered; then rounds alternate, on fresh instances of that study each time (new SOP Instance
UIDs, 128x128 CT, about 33 KB):
  (a) Orthanc's `POST /instances`, one file per request, as a client of Orthanc would;
  (b) the sidecar's `POST /api/studies/{id}/images`, `--batch` files per multipart request (each
      checked against the study, stored in Orthanc, audited);
  (c) STOW-RS, `POST /dicom-web/studies/{uid}` with `--batch` instances per request, through the
      sidecar's own front and (d) through the nginx front (Debian's nginx, the repository's
      viewer/nginx.conf), as a radiologist (each instance read and checked, then sent on to
      Orthanc's DICOMweb plugin).
Figures: instances/s of each, and each against (a).

Thumbnails: `--studies` studies are registered, then `GET /api/studies/{id}/thumbnail` is asked
for each once (cold: Orthanc renders the middle instance of the first series) and then `--repeat`
times more (cached): p50/p99 of each.

    .venv/bin/python bench/images.py --instances 300 --rounds 3 --studies 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from sidecar_process import SERVER, _fresh_database  # first: puts tests/support on sys.path

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from figures import percentile  # bench/, beside this script
from nginx_front import start_nginx_front
from stack import Stack, wait_for
from stow_requests import STOW_TYPE
from stow_requests import body as stow_body


def orthanc_upload(orthanc_url: str, files: Sequence[Path]) -> float:
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for path in files:
            answer = client.post(
                f"{orthanc_url}/instances",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            answer.raise_for_status()
    return time.perf_counter() - started


def api_upload(
    sidecar_url: str, token: str, study_id: int, files: Sequence[Path], batch: int
) -> float:
    started = time.perf_counter()
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        for start in range(0, len(files), batch):
            parts = [
                ("files", (path.name, path.read_bytes(), "application/dicom"))
                for path in files[start : start + batch]
            ]
            answer = client.post(f"{sidecar_url}/api/studies/{study_id}/images", files=parts)
            answer.raise_for_status()
            if answer.json()["stored"] != len(parts):
                raise SystemExit(f"upload stored fewer files than sent: {answer.text[:300]}")
    return time.perf_counter() - started


def stow_upload(
    front_url: str, token: str, study_uid: str, files: Sequence[Path], batch: int
) -> float:
    started = time.perf_counter()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": STOW_TYPE,
        "Accept": "application/dicom+json",
    }
    with httpx.Client(timeout=120, headers=headers) as client:
        for start in range(0, len(files), batch):
            parts = [path.read_bytes() for path in files[start : start + batch]]
            answer = client.post(
                f"{front_url}/dicom-web/studies/{study_uid}", content=stow_body(*parts)
            )
            if answer.status_code != 200:
                raise SystemExit(f"STOW-RS answered {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - started


KINDS = ("orthanc", "api", "stow-sidecar", "stow-nginx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=300, help="instances per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="files per API request")
    parser.add_argument("--studies", type=int, default=50, help="studies for thumbnails")
    parser.add_argument("--repeat", type=int, default=5, help="cached thumbnail requests")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--postgresql", action="store_true", help="PostgreSQL, not SQLite")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-images-") as tmp,
        _fresh_database(args.server, tmp, not args.postgresql) as database_url,
    ):
        root = Path(tmp)
        stack = Stack(root / "stack", database_url, stable_age=1, reconcile_interval=2.0)
        stack.start_orthanc()
        stack.start_sidecar()
        assert stack.sidecar is not None
        try:
            base = make_study(root / "base", series_count=1, instances_per_series=1)
            if not storescu_dcmtk(base.files, *stack.dicom_address, timeout=60).all_success:
                raise SystemExit("C-STORE failed")
            study_id = stack.wait_for_study(base.study_instance_uid, instances=1, timeout=60)["id"]
            token = stack.login()
            nginx = start_nginx_front(
                root / "nginx",
                orthanc=f"127.0.0.1:{stack.layout.http_port}",
                sidecar=f"127.0.0.1:{stack.sidecar_port}",
            )
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for round_number in range(args.rounds):
                # Each round in another order: what runs first does not always pay the warm-up.
                for kind in KINDS[round_number % 4 :] + KINDS[: round_number % 4]:
                    load = make_study(
                        root / f"load-{round_number}-{kind}",
                        series_count=1,
                        instances_per_series=args.instances,
                        study_instance_uid=base.study_instance_uid,
                        patient_id=base.patient_id,
                        patient_name=base.patient_name,
                        rows=128,
                        columns=128,
                    )
                    uid = base.study_instance_uid
                    if kind == "orthanc":
                        seconds = orthanc_upload(stack.orthanc.url, load.files)
                    elif kind == "api":
                        seconds = api_upload(
                            stack.sidecar.url, token, study_id, load.files, args.batch
                        )
                    else:
                        front = stack.sidecar.url if kind == "stow-sidecar" else nginx.url
                        seconds = stow_upload(front, token, uid, load.files, args.batch)
                    rates[kind].append(args.instances / seconds)
            nginx.stop()

            thumbnails = []
            for n in range(args.studies):
                study = make_study(root / f"thumb-{n}", series_count=1, instances_per_series=3)
                if not storescu_dcmtk(study.files, *stack.dicom_address, timeout=60).all_success:
                    raise SystemExit("C-STORE failed")
                thumbnails.append(study.study_instance_uid)
            ids = [stack.wait_for_study(uid, instances=3, timeout=120)["id"] for uid in thumbnails]
            for study_id in ids:  # a thumbnail needs the study's image rows (a later lane)

                def images_listed(study_id: int = study_id) -> bool:
                    listed = stack.api("GET", f"/api/studies/{study_id}/images").json()
                    return bool(listed["total"] == 3)

                wait_for(images_listed, timeout=120, what="the study's images listed")
            cold: list[float] = []
            cached: list[float] = []
            with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
                for timings, rounds in ((cold, 1), (cached, args.repeat)):
                    for _ in range(rounds):
                        for study_id in ids:
                            started = time.perf_counter()
                            answer = client.get(
                                f"{stack.sidecar.url}/api/studies/{study_id}/thumbnail"
                            )
                            timings.append(time.perf_counter() - started)
                            if answer.status_code != 200 or not answer.content.startswith(
                                b"\x89PNG"
                            ):
                                raise SystemExit(f"thumbnail answered {answer.status_code}")
        finally:
            stack.close()

    median = {kind: statistics.median(rates[kind]) for kind in KINDS}
    database = "PostgreSQL" if args.postgresql else "SQLite"
    print(f"upload, {args.rounds} rounds x {args.instances} instances, database {database}")
    labels = {
        "orthanc": "Orthanc POST /instances (1 per request)",
        "api": f"POST /api/studies/{{id}}/images ({args.batch} per request)",
        "stow-sidecar": f"STOW-RS, sidecar front ({args.batch} per request)",
        "stow-nginx": f"STOW-RS, nginx front ({args.batch} per request)",
    }
    for kind in KINDS:
        print(
            f"  {labels[kind]:<52} {median[kind]:5.0f} instances/s (median), "
            f"ratio {median[kind] / median['orthanc']:.2f}; rounds "
            f"{[round(r) for r in rates[kind]]}"
        )
    ms = [1000 * s for s in cold]
    ms_cached = [1000 * s for s in cached]
    print(f"thumbnails, {args.studies} studies:")
    print(f"  cold   p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms")
    print(
        f"  cached p50 {percentile(ms_cached, 0.5):.1f} ms, "
        f"p99 {percentile(ms_cached, 0.99):.1f} ms ({len(ms_cached)} requests)"
    )


if __name__ == "__main__":
    main()
