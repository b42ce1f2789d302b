"""Patient merge reaching the images: ADT^A40 over MLLP -> every stored file re-filed.

Orthanc (with the plugin and the ingress filter) and the sidecar run for real (the test stack,
the sidecar in this process); the sidecar's database is a fresh PostgreSQL one (SQLite with
--sqlite). First `--studies` studies of `--instances` CT instances each are sent with dcmtk
storescu under the prior identifier and registered; then the HIS sends ADT^A01 for the surviving
patient and ADT^A40 merging the prior into it. Reported: the A40's send-to-ACK time, and the time
from the ACK until Orthanc's index holds no instance under the prior identifier and every
instance under the survivor's (polled every 50 ms), then checked on the files themselves (every
file read back with pydicom: survivor's id, UIDs unchanged).

    .venv/bin/python bench/patient_merge.py --studies 20 --instances 50
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from sidecar_process import SERVER, _fresh_database  # first: puts tests/support on sys.path

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from hl7_samples import ADT_A01_251, ADT_A40_251
from stack import Stack, wait_for

PRIOR, SURVIVOR = "MRN-7666", "MRN-7001"  # the identifiers ADT_A40_251 names


def instances_of(orthanc_url: str, patient_id: str) -> int:
    found = httpx.post(
        f"{orthanc_url}/tools/find",
        json={"Level": "Instance", "Query": {"PatientID": patient_id}},
        timeout=60,
    )
    found.raise_for_status()
    return len(found.json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--instances", type=int, default=50, help="instances per study")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()
    total = args.studies * args.instances

    with (
        tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp,
        _fresh_database(args.server, tmp, args.sqlite) as database_url,
    ):
        root = Path(tmp)
        load = []
        for n in range(args.studies):
            study = make_study(
                root / "load" / str(n),
                patient_id=PRIOR,
                issuer_of_patient_id="GENHOSP",
                patient_name="DOE^JOHN",
                series_count=1,
                instances_per_series=args.instances,
                rows=128,
                columns=128,
            )
            load.append(study)
        stack = Stack(root / "stack", database_url, stable_age=1, reconcile_interval=2.0)
        stack.start_orthanc()
        stack.start_sidecar()
        try:
            for study in load:
                if not storescu_dcmtk(study.files, *stack.dicom_address, timeout=300).all_success:
                    raise SystemExit("C-STORE failed")
            for study in load:
                stack.wait_for_study(
                    study.study_instance_uid, instances=args.instances, timeout=120
                )
            stack.wait_until_synced(timeout=120)
            print(
                f"stored and registered: {args.studies} studies x {args.instances} instances "
                f"({total}) under the prior id; database "
                f"{'SQLite' if args.sqlite else 'PostgreSQL'}"
            )
            with MllpClient("127.0.0.1", stack.mllp_port) as his:
                assert parse_ack(his.send(ADT_A01_251)).code == "AA"
                sent = time.perf_counter()
                ack = parse_ack(his.send(ADT_A40_251))
                acked = time.perf_counter()
            if ack.code != "AA":
                raise SystemExit(f"A40 answered {ack.code}")
            orthanc = stack.orthanc.url

            def refiled() -> bool:
                return (
                    instances_of(orthanc, PRIOR) == 0 and instances_of(orthanc, SURVIVOR) == total
                )

            wait_for(refiled, timeout=900, interval=0.05, what="every instance re-filed")
            done = time.perf_counter()
            assert stack.sidecar is not None
            health = httpx.get(f"{stack.sidecar.url}/health", timeout=30).json()["imageUpdates"]
            # The files themselves, every one.
            sop_uids = {uid for study in load for uid in study.sop_instance_uids}
            read: set[str] = set()
            for instance in httpx.get(f"{orthanc}/instances", timeout=60).json():
                content = httpx.get(f"{orthanc}/instances/{instance}/file", timeout=60).content
                dataset = pydicom.dcmread(io.BytesIO(content))
                if str(dataset.PatientID) != SURVIVOR:
                    raise SystemExit("a stored file still carries the prior identifier")
                read.add(str(dataset.SOPInstanceUID))
            if read != sop_uids:
                raise SystemExit("the SOP Instance UIDs stored are not those sent")
        finally:
            stack.close()

    seconds = done - acked
    print(f"A40 send -> ACK      : {(acked - sent) * 1000:.0f} ms")
    print(
        f"ACK -> all re-filed  : {seconds:.1f} s for {total} instances "
        f"({total / seconds:.0f} instances/s)"
    )
    print(f"files read back      : {len(read)}, every one under {SURVIVOR}, UIDs unchanged")
    print(f"/health imageUpdates : pending {health['pending']}, failed {health['failed']}")


if __name__ == "__main__":
    main()
