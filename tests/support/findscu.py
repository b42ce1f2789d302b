"""Modality Worklist queries as modalities make them, with pynetdicom and with dcmtk's findscu
(/usr/bin/findscu, not pynetdicom's command of the same name): the attributes asked for, the
queries the tests send, and the answers.

Items are keyed so that their accession number is "ACC" + key.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from dicom_senders import _nodelay_handlers

FINDSCU = "/usr/bin/findscu"
PENDING = {0xFF00, 0xFF01}

TOP_LEVEL = [
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
]
IN_STEP = [
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
]

# name -> (top-level constraints, step constraints, expected keys)
QUERIES: dict[str, tuple[dict[str, str], dict[str, str], set[str]]] = {
    "accession": ({"AccessionNumber": "ACC3"}, {}, {"3"}),
    "patient": ({"PatientID": "PAT1"}, {}, {"1", "2"}),
    "modality+dates": (
        {},
        {"Modality": "CT", "ScheduledProcedureStepStartDate": "20240603-20240604"},
        {"1", "3"},
    ),
    "universal": ({}, {}, {"1", "2", "3", "4", "5"}),
}


def mwl_query(top: dict[str, str], step: dict[str, str]) -> Dataset:
    """Every attribute the worklist offers as a return key, with the given constraints."""
    ds = Dataset()
    for keyword in TOP_LEVEL:
        setattr(ds, keyword, top.get(keyword, ""))
    sps = Dataset()
    for keyword in IN_STEP:
        setattr(sps, keyword, step.get(keyword, ""))
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def find_pynetdicom(
    port: int, query: Dataset, calling_aet: str = "PYNETDICOM"
) -> tuple[list[Dataset], int | None]:
    """C-FIND over one association: the identifiers, and the final status (None when none came:
    Orthanc aborts the association on a refused worklist C-FIND)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC", evt_handlers=_nodelay_handlers())
    assert assoc.is_established, "association refused"
    answers: list[Dataset] = []
    final: int | None = None
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if "Status" not in status:
                break
            code = int(status.Status)
            if code in PENDING and identifier is not None:
                answers.append(identifier)
            elif code not in PENDING:
                final = code
    finally:
        assoc.release()
        ae.shutdown()
    return answers, final


def findscu_keys(top: dict[str, str], step: dict[str, str]) -> list[str]:
    keys = [f"{keyword}={top.get(keyword, '')}" for keyword in TOP_LEVEL]
    keys += [
        f"ScheduledProcedureStepSequence[0].{keyword}={step.get(keyword, '')}"
        for keyword in IN_STEP
    ]
    return [arg for key in keys for arg in ("-k", key)]


def find_dcmtk(port: int, keys: list[str], out_dir: Path) -> list[Dataset]:
    out_dir.mkdir(parents=True)
    command = [FINDSCU, "-W", "-X", "-od", str(out_dir), "-to", "30", "-aet", "FINDSCU"]
    command += ["-aec", "ORTHANC", "127.0.0.1", str(port), *keys]
    done = subprocess.run(
        command,
        env=dict(os.environ, TCP_NODELAY="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]
