"""The sidecar's view of Orthanc's REST API.

Exceptions:
    OrthancError
      OrthancUnavailable   connection refused, timeout, 5xx: try again later
      OrthancNotFound      404: the resource is gone (deleted), stop asking
      OrthancCannotRender  4xx to a rendering: the instance has no image Orthanc can draw
      OrthancRefusedInstance  a file Orthanc will not store (unreadable, ingress filter)
httpx errors are translated here and nowhere else.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import httpx

from sidecar.core.http import tls_context

# Orthanc identifiers are SHA-1 based: five dash-separated groups of eight hex digits.
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_UPLOAD_CHUNK = 1024 * 1024


class OrthancError(Exception):
    pass


class OrthancUnavailable(OrthancError):
    pass


class OrthancNotFound(OrthancError):
    pass


class OrthancCannotRender(OrthancError):
    pass


class OrthancRefusedInstance(OrthancError):
    """Orthanc declined to store a file (unreadable, or refused by the ingress filter): sending
    it again changes nothing. The message is for the uploader and names no patient data."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        # True: the ingress filter's refusal (the UID is stored under another patient id).
        self.conflict = conflict


@dataclass(frozen=True)
class StoredInstance:
    instance_id: str
    study_id: str
    already_stored: bool


@dataclass(frozen=True)
class AnonymizedStudy:
    orthanc_id: str
    instances: int
    failed_instances: int

    @classmethod
    def of_job(cls, job: dict[str, Any]) -> AnonymizedStudy:
        """What a successful anonymization job made (its Content)."""
        try:
            made = job["Content"]
            return cls(
                orthanc_id=str(made["ID"]),
                instances=int(made.get("InstancesCount", 0)),
                failed_instances=int(made.get("FailedInstancesCount", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OrthancUnavailable("anonymize job: unexpected answer") from exc


# Orthanc's ZIP archive of a whole study may take minutes for a large one; its first bytes
# come once its first files are read.
_LONG_TIMEOUT = 600.0

# The ingress filter's refusal (orthanc/dicom_ingress.lua): Orthanc answers 500 with it.
_OTHER_PATIENT_REFUSAL = "already stored under another patient id"


class OrthancClient:
    def __init__(
        self,
        base_url: str,
        *,
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        auth = httpx.BasicAuth(username, password) if username else None
        self._http = httpx.Client(
            base_url=base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
        )

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"GET {path}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise OrthancNotFound(path)
        if response.status_code >= 400:
            raise OrthancUnavailable(f"GET {path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise OrthancUnavailable(f"GET {path}: answer is not JSON") from exc

    def system(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/system")
        return result

    def changes(self, since: int, limit: int) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/changes", {"since": since, "limit": limit})
        return result

    def study(self, orthanc_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/studies/{orthanc_id}")
        return result

    def study_series(self, orthanc_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(f"/studies/{orthanc_id}/series")
        return result

    def study_instance_ids(self, orthanc_id: str) -> list[str]:
        instances = self._get(f"/studies/{orthanc_id}/instances")
        return [str(instance["ID"]) for instance in instances]

    def study_instances(self, orthanc_id: str) -> list[dict[str, Any]]:
        """The study's instances as Orthanc indexes them: ID, ParentSeries, MainDicomTags."""
        result: list[dict[str, Any]] = self._get(f"/studies/{orthanc_id}/instances")
        return result

    def study_ids(self) -> list[str]:
        """Every study Orthanc holds, by Orthanc id."""
        return [str(orthanc_id) for orthanc_id in self._get("/studies")]

    def study_instances_tags(self, orthanc_id: str) -> dict[str, dict[str, Any]]:
        """Every instance's tags keyed by Orthanc instance id, tags as "gggg,eeee" -> value."""
        result: dict[str, dict[str, Any]] = self._get(
            f"/studies/{orthanc_id}/instances-tags", {"short": ""}
        )
        return result

    def studies_with_uid(self, study_instance_uid: str) -> dict[str, str]:
        """Every Orthanc study holding this StudyInstanceUID (one per patient id Orthanc filed
        it under), as Orthanc id -> PatientID."""
        try:
            response = self._http.post("/tools/lookup", content=study_instance_uid.encode())
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"POST /tools/lookup: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise OrthancUnavailable(f"POST /tools/lookup: HTTP {response.status_code}")
        found = {}
        for resource in response.json():
            if resource.get("Type") == "Study":
                study = self.study(str(resource["ID"]))
                patient = study.get("PatientMainDicomTags", {})
                found[str(resource["ID"])] = str(patient.get("PatientID", "")).strip()
        return found

    def calling_ae_title(self, instance_id: str) -> str | None:
        """The AE title that sent the instance (Orthanc's RemoteAET metadata); None when it
        came another way (REST, the API)."""
        try:
            response = self._http.get(f"/instances/{instance_id}/metadata/RemoteAET")
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"GET instance metadata: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise OrthancUnavailable(f"GET instance metadata: HTTP {response.status_code}")
        return response.text.strip() or None

    # -- re-filing instances under a patient (sidecar.patients.image_updates) ------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call that changes Orthanc: 404 is OrthancNotFound, any other failure
        OrthancUnavailable with Orthanc's own message (no patient data: the instance is named
        by its Orthanc id only)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"{method} {path}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise OrthancNotFound(path)
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("Details") or response.json().get("Message"))
            except ValueError:
                detail = ""
            raise OrthancUnavailable(f"{method} {path}: HTTP {response.status_code} {detail}")
        return response

    def modified_instance(
        self, instance_id: str, replace: dict[str, str], remove: list[str]
    ) -> bytes:
        """The instance's file with these tags replaced or removed and every UID kept (Orthanc
        writes the values in the file's character set). Nothing is stored."""
        body = {
            "Replace": replace,
            "Remove": remove,
            "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            "Force": True,
        }
        return self._send("POST", f"/instances/{instance_id}/modify", json=body).content

    def store_instance(self, content: bytes) -> tuple[str, str]:
        """Stores a DICOM file; its Orthanc id and its study's. An instance of that id stored
        already is kept as it is (Orthanc answers AlreadyStored)."""
        answer = self._send(
            "POST", "/instances", content=content, headers={"Content-Type": "application/dicom"}
        ).json()
        return str(answer["ID"]), str(answer["ParentStudy"])

    def upload_instance(self, content: IO[bytes], size: int) -> StoredInstance:
        """Stores an uploaded DICOM file of `size` bytes, read from `content` in chunks (never
        whole in memory). Raises OrthancRefusedInstance when Orthanc will not store it,
        OrthancUnavailable when Orthanc cannot be reached or fails otherwise."""

        def chunks() -> Iterator[bytes]:
            while chunk := content.read(_UPLOAD_CHUNK):
                yield chunk

        content.seek(0)
        headers = {"Content-Type": "application/dicom", "Content-Length": str(size)}
        try:
            response = self._http.post("/instances", content=chunks(), headers=headers)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"POST /instances: {type(exc).__name__}") from exc
        if response.status_code == 400:
            raise OrthancRefusedInstance("Orthanc cannot read it as a DICOM instance")
        if response.status_code >= 400:
            if _OTHER_PATIENT_REFUSAL in response.text:
                raise OrthancRefusedInstance(
                    "its Study Instance UID is stored in Orthanc under another patient id",
                    conflict=True,
                )
            raise OrthancUnavailable(f"POST /instances: HTTP {response.status_code}")
        try:
            answer = response.json()
            return StoredInstance(
                instance_id=str(answer["ID"]),
                study_id=str(answer["ParentStudy"]),
                already_stored=answer.get("Status") == "AlreadyStored",
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OrthancUnavailable("POST /instances: unexpected answer") from exc

    def delete_instance(self, instance_id: str) -> None:
        with contextlib.suppress(OrthancNotFound):  # deleted already: what was asked
            self._send("DELETE", f"/instances/{instance_id}")

    # -- withdrawing images (sidecar.studies.rejection) -----------------------------------------

    def resources_with_uid(self, uid: str, level: str) -> list[str]:
        """The Orthanc ids of every resource of `level` ("Series", "Instance") Orthanc holds
        under this DICOM UID (one per patient id it was filed under); empty when none."""
        answer = self._send("POST", "/tools/lookup", content=uid.encode()).json()
        return [str(found["ID"]) for found in answer if found.get("Type") == level]

    def delete_series(self, series_id: str) -> None:
        with contextlib.suppress(OrthancNotFound):  # deleted already: what was asked
            self._send("DELETE", f"/series/{series_id}")

    def mark_study(self, orthanc_id: str, name: str, value: str) -> None:
        """Sets a user metadata entry of the study (declared in orthanc/orthanc.json)."""
        self._send("PUT", f"/studies/{orthanc_id}/metadata/{name}", content=value.encode())

    def reconstruct_study(self, orthanc_id: str) -> None:
        """Orthanc re-reads the study's main tags (patient level included) from its files."""
        self._send("POST", f"/studies/{orthanc_id}/reconstruct", json={})

    def parent_study_of_instance(self, instance_id: str) -> str:
        study = self._get(f"/instances/{instance_id}/study")
        return str(study["ID"])

    def parent_study_of_series(self, series_id: str) -> str:
        study = self._get(f"/series/{series_id}/study")
        return str(study["ID"])

    # -- an instance's file and renderings (sidecar.studies.image_access) ----------------------

    def _get_bytes(
        self, path: str, *, params: dict[str, Any] | None = None, accept: str = ""
    ) -> bytes:
        headers = {"Accept": accept} if accept else {}
        try:
            response = self._http.get(path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"GET {path}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise OrthancNotFound(path)
        if 400 <= response.status_code < 500:
            raise OrthancCannotRender(f"GET {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise OrthancUnavailable(f"GET {path}: HTTP {response.status_code}")
        return response.content

    def instance_preview(self, instance_id: str) -> bytes:
        """The instance's first frame as PNG, full size, Orthanc's default windowing."""
        return self._get_bytes(f"/instances/{instance_id}/preview", accept="image/png")

    def instance_rendered(
        self, instance_id: str, media_type: str, *, max_size: int | None = None
    ) -> bytes:
        """The instance's first frame in `media_type` (image/png or image/jpeg), scaled down to
        fit `max_size` pixels either way when given (aspect kept)."""
        params = {"width": max_size, "height": max_size} if max_size else None
        return self._get_bytes(
            f"/instances/{instance_id}/rendered", params=params, accept=media_type
        )

    def instance_file(self, instance_id: str) -> Iterator[bytes]:
        """The instance's DICOM file, in chunks: the answer is checked before the first one
        is given (OrthancNotFound, OrthancUnavailable raised here), the file read as it is
        sent. A failure midway ends the chunks with OrthancUnavailable."""
        return self._stream(f"/instances/{instance_id}/file")

    def study_archive(self, orthanc_id: str) -> Iterator[bytes]:
        """The study as a ZIP of its DICOM files, in chunks, as `instance_file`. Orthanc writes
        it as it sends it, so a large study is never whole in memory here."""
        return self._stream(f"/studies/{orthanc_id}/archive", timeout=_LONG_TIMEOUT)

    # -- de-identified copies (sidecar.studies.deidentification) ------------------------------

    def start_anonymize_study(self, orthanc_id: str, options: dict[str, Any]) -> str:
        """Orthanc's job making a de-identified copy of the study (the options are Orthanc's:
        DicomVersion, Replace, ...): its id, to follow with `job` and stop with `cancel_job`."""
        body = {**options, "Synchronous": False}
        answer = self._send("POST", f"/studies/{orthanc_id}/anonymize", json=body).json()
        if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str):
            raise OrthancUnavailable("POST anonymize: unexpected answer")
        return str(answer["ID"])

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Orthanc's job (State: Pending, Running, Paused, Retry, Success, Failure); None when
        Orthanc does not know it (a forgotten or never started job)."""
        try:
            found: dict[str, Any] = self._get(f"/jobs/{job_id}")
        except OrthancNotFound:
            return None
        return found

    def cancel_job(self, job_id: str) -> None:
        """Asks Orthanc to stop the job (a job already finished, or unknown, stays as it is)."""
        try:
            response = self._http.post(f"/jobs/{job_id}/cancel", content=b"")
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"POST cancel job: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise OrthancUnavailable(f"POST cancel job: HTTP {response.status_code}")

    def delete_study(self, orthanc_id: str) -> None:
        with contextlib.suppress(OrthancNotFound):  # deleted already: what was asked
            self._send("DELETE", f"/studies/{orthanc_id}")

    def _stream(self, path: str, *, timeout: float | None = None) -> Iterator[bytes]:
        try:
            request = self._http.build_request(
                "GET", path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
            )
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"GET {path}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            response.close()
            if response.status_code == 404:
                raise OrthancNotFound(path)
            raise OrthancUnavailable(f"GET {path}: HTTP {response.status_code}")
        return _chunks(response, path)


def _chunks(response: httpx.Response, path: str) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(chunk_size=256 * 1024)
    except httpx.HTTPError as exc:
        raise OrthancUnavailable(f"GET {path}: {type(exc).__name__}") from exc
    finally:
        response.close()
