"""An external AI analyzer as a vendor would write one against the sidecar, with nothing but an
HTTP client (httpx) and pydicom: it finds a work item over UPS-RS, claims it, reads the study's
images over WADO-RS at the Retrieve URL the work item gives, stores its report over STOW-RS,
names it in the work item's Output Information and completes it (IHE AIW-I, RAD-80 to RAD-88).

No sidecar code is used here: what it sends is what any UPS-RS client would send.
"""

from __future__ import annotations

import io
import re
import secrets
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

DICOM_JSON = "application/dicom+json"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


class UpsPerformer:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    # --- UPS-RS -------------------------------------------------------------------------------

    def search(self, **params: str) -> list[Dataset]:
        answer = self.http.get(
            "/dicom-web/workitems", params=params, headers={"Accept": DICOM_JSON}
        )
        if answer.status_code == 204:
            return []
        answer.raise_for_status()
        return [Dataset.from_json(item) for item in answer.json()]

    def retrieve(self, uid: str) -> Dataset:
        answer = self.http.get(f"/dicom-web/workitems/{uid}", headers={"Accept": DICOM_JSON})
        answer.raise_for_status()
        [item] = answer.json()
        return Dataset.from_json(item)

    def change_state(self, uid: str, state: str, transaction_uid: str) -> httpx.Response:
        request = Dataset()
        request.ProcedureStepState = state
        request.TransactionUID = transaction_uid
        return self.http.put(
            f"/dicom-web/workitems/{uid}/state",
            json=request.to_json_dict(),
            headers={"Content-Type": DICOM_JSON},
        )

    def claim(self, uid: str) -> tuple[httpx.Response, str]:
        """IN PROGRESS under a Transaction UID of its own making (PS3.4 CC.2.4.3)."""
        transaction_uid = str(generate_uid())
        return self.change_state(uid, "IN PROGRESS", transaction_uid), transaction_uid

    def update(self, uid: str, transaction_uid: str, changes: Dataset) -> httpx.Response:
        return self.http.post(
            f"/dicom-web/workitems/{uid}?{transaction_uid}",
            json=changes.to_json_dict(),
            headers={"Content-Type": DICOM_JSON},
        )

    # --- WADO-RS and STOW-RS --------------------------------------------------------------------

    def read_study(self, retrieve_url: str) -> list[Dataset]:
        """The study's instances at its Retrieve URL (WADO-RS, multipart/related)."""
        answer = self.http.get(
            retrieve_url, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        answer.raise_for_status()
        return [pydicom.dcmread(io.BytesIO(part)) for part in multipart_parts(answer)]

    def store(self, study_uid: str, instance: Dataset) -> httpx.Response:
        """STOW-RS of one instance into its study."""
        content = io.BytesIO()
        instance.save_as(content, enforce_file_format=True)
        boundary = f"performer-{secrets.token_hex(12)}"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + content.getvalue()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.http.post(
            f"/dicom-web/studies/{study_uid}",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
        )


def multipart_parts(answer: httpx.Response) -> list[bytes]:
    found = _BOUNDARY.search(answer.headers.get("content-type", ""))
    assert found, answer.headers.get("content-type")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in answer.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body.removesuffix(b"\r\n"))
    return parts


def output_information(report: Dataset) -> Dataset:
    """The update naming a stored report as the work item's output (PS3.4 Table CC.2.5-3:
    Unified Procedure Step Performed Procedure Sequence > Output Information Sequence, a
    Referenced Instances and Access macro)."""
    sop = Dataset()
    sop.ReferencedSOPClassUID = report.SOPClassUID
    sop.ReferencedSOPInstanceUID = report.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = report.SeriesInstanceUID
    series.ReferencedSOPSequence = [sop]
    output = Dataset()
    output.TypeOfInstances = "DICOM"
    output.StudyInstanceUID = report.StudyInstanceUID
    output.ReferencedSeriesSequence = [series]
    performed = Dataset()
    performed.OutputInformationSequence = [output]
    performed.PerformedProcedureStepStartDateTime = "20261201120000"
    changes = Dataset()
    changes.UnifiedProcedureStepPerformedProcedureSequence = [performed]
    return changes


def served(item: Dataset) -> dict[str, Any]:
    """What a performer reads off a work item: which study, where, and for which analyzer."""
    source = item.InputInformationSequence[0]
    return {
        "uid": str(item.SOPInstanceUID),
        "study": str(source.StudyInstanceUID),
        "retrieve_url": str(source.RetrieveURL),
        "analyzer": str(item.ProcedureStepLabel),
    }
