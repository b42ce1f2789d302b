"""One list of hostile requests, and one of the requests the viewer really makes, run against
both viewer fronts: the sidecar's own (tests/viewer/test_viewer_proxy.py) and nginx running
viewer/nginx.conf (tests/viewer/test_viewer_deployment.py).

The hostile ones try to reach Orthanc's REST API through /dicom-web and /wado: dot segments,
raw or percent-encoded (Orthanc decodes and normalises the path it is given), `_method=DELETE`
and X-HTTP-Method-Override (Orthanc 1.10 runs a GET as a DELETE on either), routes of the
DICOMweb plugin that are not reads (`servers`), other spellings. Each is refused with the status
given, whatever the credential (the refusal comes before the session check), and afterwards
Orthanc still holds the study, its change log is whole, and no answer named the patient.

Requests are sent with http.client, which sends the target exactly as written (httpx would
remove dot segments and re-encode).
"""

from __future__ import annotations

import http.client
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sidecar.viewer.paths import FORWARDED_REQUEST_HEADERS

from dicom_factory import make_study
from dicom_senders import storescu_dcmtk
from stack import STACK_ADMIN_PASSWORD, Stack

_LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 40  # 66 characters


@dataclass(frozen=True)
class StoredStudy:
    """A study in Orthanc with a patient whose name and id are looked for in every answer."""

    orthanc_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_name: str
    patient_id: str

    def fill(self, target: str) -> str:
        return target.format(
            orthanc_id=self.orthanc_id,
            uid=self.study_uid,
            series=self.series_uid,
            sop=self.sop_uid,
            patient_id=self.patient_id,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        family, given = self.patient_name.split("^")
        return (family, given, self.patient_id)


@dataclass(frozen=True)
class Probe:
    """A raw request target ({orthanc_id}, {uid}, {series}, {sop}, {patient_id} are filled
    in); `status`: what both fronts answer, None for any 4xx (they refuse a method each in
    their own way)."""

    target: str
    status: int | None
    why: str
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "GET"


_INSTANCE = "/dicom-web/studies/{uid}/series/{series}/instances/{sop}"
_DELETE = {"X-HTTP-Method-Override": "DELETE"}

HOSTILE: tuple[Probe, ...] = (
    # Dot segments, percent-encoded: nginx and the sidecar decoded them, Orthanc resolved them.
    Probe("/dicom-web/%2e%2e/studies/{orthanc_id}?_method=DELETE", 400, "deletes the study"),
    Probe("/dicom-web/%2e%2e/studies/{orthanc_id}", 400, "reads Orthanc's study resource"),
    Probe("/dicom-web/..%2fstudies/{orthanc_id}", 400, "encoded slash after a dot segment"),
    Probe("/dicom-web/..%2fstudies/{orthanc_id}?_method=DELETE", 400, "deletes the study"),
    Probe("/dicom-web/%2E%2E/changes?_method=DELETE", 400, "empties /changes"),
    Probe("/dicom-web/%2e%2e/changes", 400, "reads the change log"),
    Probe("/dicom-web/..%2f..%2fpatients?expand", 400, "every patient's name, id, birth date"),
    Probe("/dicom-web/studies/..%2f..%2fpatients", 400, "from inside a route"),
    Probe("/dicom-web/studies/{uid}/..%2F..%2F..%2Fpatients?expand", 400, "from a study"),
    Probe("/dicom-web/%252e%252e/studies/{orthanc_id}?_method=DELETE", 400, "double-encoded"),
    Probe("/dicom-web/..%5cstudies/{orthanc_id}?_method=DELETE", 400, "encoded backslash"),
    Probe("/dicom-web/..\\studies/{orthanc_id}?_method=DELETE", 400, "raw backslash"),
    Probe("/dicom-web/%2e./studies/{orthanc_id}?_method=DELETE", 400, "half-encoded dots"),
    Probe("/dicom-web/%00/../patients", 400, "NUL"),
    Probe("/dicom-web/studies/{uid}%00", 400, "NUL after a UID"),
    # Dot segments and empty segments, raw.
    Probe("/dicom-web/../studies/{orthanc_id}?_method=DELETE", 400, "raw dot segment"),
    Probe("/dicom-web/../../patients?expand", 400, "raw dot segments"),
    Probe("/dicom-web//studies", 400, "empty segment"),
    Probe("/dicom-web/./studies", 400, "dot segment"),
    Probe("/dicom-web/studies/{uid}/series/..", 400, "trailing dot segment"),
    Probe("/dicom-web/studies/{uid}/series/{series}/..", 400, "dot segment after a series"),
    Probe(f"{_INSTANCE}/frames/1/../../../../../../../../changes?_method=DELETE", 400, "frames"),
    Probe(f"{_INSTANCE}/bulk/../../../../../../../../patients", 400, "out of bulk data"),
    Probe(f"{_INSTANCE}/bulk/7fe00010/..%2f..%2f..", 400, "encoded, out of bulk data"),
    Probe("/dicom-web/studies/{uid};/../../../patients", 400, "a ; before dot segments"),
    Probe("/dicom-web/studies/{uid}#/../../../patients", 400, "a # before dot segments"),
    Probe("/wado/../patients", 400, "out of WADO-URI"),
    Probe("/wado/..%2fpatients?expand", 400, "out of WADO-URI, encoded"),
    Probe("/viewer/..%2f..%2fdicom-web%2f..%2fpatients", 400, "through the viewer's route"),
    # Other spellings of the allowed routes.
    Probe(
        "/%77ado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}",
        400,
        "an encoded letter in /wado",
    ),
    Probe("/%64icom-web/studies", 400, "an encoded letter in /dicom-web"),
    Probe("/DICOM-WEB/studies", 404, "upper case"),
    Probe("/Dicom-Web/studies/{uid}/series", 404, "mixed case"),
    Probe("/dicom-web/STUDIES", 404, "upper-case route"),
    Probe("/Dicom-Web/%2E%2E/studies/{orthanc_id}?_method=DELETE", 400, "mixed case, deletes"),
    Probe(
        "/WADO?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}",
        404,
        "upper-case WADO-URI",
    ),
    Probe("/dicom-web", 404, "the root, without a slash"),
    Probe("/dicom-web/", 404, "the root"),
    Probe("/dicom-web/studies/", 404, "a trailing slash"),
    Probe("/wado/", 404, "WADO-URI with a slash"),
    Probe("/wadox", 404, "WADO-URI with a suffix"),
    Probe(f"/dicom-web/studies/{_LONG_UID}", 404, "a UID over 64 characters"),
    Probe("/dicom-web/studies/{uid}x", 404, "a UID with a letter"),
    Probe(f"{_INSTANCE}/frames/0", 404, "frame 0"),
    # Routes of the DICOMweb plugin that are not a viewer's reads.
    Probe("/dicom-web/servers", 404, "the DICOMweb client's servers"),
    Probe("/dicom-web/servers/x/delete", 404, "deletes on another server"),
    Probe("/dicom-web/info", 404, "the plugin's information"),
    Probe("/dicom-web/app/client/index.html", 404, "the plugin's web client"),
    # Method overrides.
    Probe("/dicom-web/studies?_method=DELETE", 400, "_method"),
    Probe("/dicom-web/studies/{uid}?_method=DELETE", 400, "_method on a study"),
    Probe("/dicom-web/studies?%5Fmethod=DELETE", 400, "encoded _method"),
    Probe("/dicom-web/studies?%5fmethod=DELETE", 400, "encoded _method, lower case"),
    Probe("/dicom-web/studies?PatientName=*&_method=DELETE", 400, "_method after a search"),
    Probe("/wado?requestType=WADO&_method=DELETE", 400, "_method on WADO-URI"),
    Probe("/dicom-web/studies?=x", 400, "an empty parameter name"),
    Probe("/dicom-web/studies?limit=1&&offset=0", 400, "an empty parameter"),
    Probe("/dicom-web/studies/{uid}", 400, "method override header", headers=_DELETE),
    Probe(
        "/dicom-web/studies",
        400,
        "method override header, lower case",
        {"x-http-method-override": "delete"},
    ),
    Probe("/dicom-web/studies", 400, "X-HTTP-Method", {"X-HTTP-Method": "DELETE"}),
    Probe("/dicom-web/studies", 400, "X-Method-Override", {"X-Method-Override": "DELETE"}),
    Probe(
        "/wado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}",
        400,
        "method override header on WADO-URI",
        headers=_DELETE,
    ),
    # A study named so that the fronts could not tell which (sidecar.viewer.targets): WADO-URI
    # without its study serves any instance, whatever study it is in.
    Probe(
        "/wado?requestType=WADO&seriesUID={series}&objectUID={sop}&contentType=application/dicom",
        400,
        "WADO-URI without the study",
    ),
    Probe("/wado?requestType=WADO&studyUID=&objectUID={sop}", 400, "WADO-URI, an empty study"),
    Probe("/wado?requestType=WADO&StudyUID={uid}&objectUID={sop}", 400, "a study Orthanc ignores"),
    Probe("/dicom-web/series?StudyInstanceUID={uid}*", 400, "a wildcard for the study"),
    Probe("/dicom-web/instances?0020000D=%31{uid}", 400, "a percent-escaped study UID"),
    # A Host that adds elements to the Forwarded header Orthanc writes URLs from.
    Probe(
        "/dicom-web/studies",
        400,
        "a Host smuggling Forwarded elements",
        headers={"Host": 'evil.example";host=x;proto=javascript'},
    ),
    Probe(
        "/wado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}",
        400,
        "a Host smuggling a Forwarded element into WADO-URI",
        headers={"Host": "a.test;proto=https"},
    ),
    # Methods other than GET and HEAD.
    Probe("/dicom-web/studies/{uid}", None, "DELETE", method="DELETE"),
    Probe("/dicom-web/%2e%2e/studies/{orthanc_id}", None, "DELETE, encoded", method="DELETE"),
    Probe("/dicom-web/studies", None, "STOW-RS", method="POST"),
)

POSITIVE: tuple[Probe, ...] = (
    Probe(
        "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060&StudyInstanceUID={uid}",
        200,
        "OHIF's study list search",
    ),
    Probe(
        "/dicom-web/studies?00100020={patient_id}&limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060",
        200,
        "OHIF's study list, by MRN",
    ),
    Probe("/dicom-web/studies?PatientName=*&limit=25", 200, "a search by name"),
    Probe(
        "/dicom-web/studies/{uid}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011",
        200,
        "a study's series, as OHIF asks",
    ),
    Probe("/dicom-web/series?StudyInstanceUID={uid}", 200, "QIDO series"),
    Probe("/dicom-web/instances?StudyInstanceUID={uid}", 200, "QIDO instances"),
    Probe("/dicom-web/studies/{uid}/instances", 200, "a study's instances"),
    Probe("/dicom-web/studies/{uid}/series/{series}/instances", 200, "a series' instances"),
    Probe("/dicom-web/studies/{uid}/metadata", 200, "study metadata"),
    Probe("/dicom-web/studies/{uid}/series/{series}/metadata", 200, "series metadata"),
    Probe(f"{_INSTANCE}/metadata", 200, "instance metadata"),
    Probe(
        f"{_INSTANCE}/frames/1",
        200,
        "a frame, as OHIF asks for it",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    ),
    Probe(f"{_INSTANCE}/rendered", 200, "a rendered instance"),
    Probe(f"{_INSTANCE}/bulk/7fe00010", 200, "bulk data, as the metadata names it"),
    Probe(
        "/wado?requestType=WADO&studyUID={uid}&seriesUID={series}&objectUID={sop}"
        "&contentType=application/dicom",
        200,
        "WADO-URI",
    ),
)


# Values for the placeholders where no Orthanc is involved.
SAMPLE = StoredStudy(
    orthanc_id="0249773a-af11bc81-9e6285e2-a585c789-6b852af0",
    study_uid="1.2.826.0.1.3680043.8.498.11",
    series_uid="1.2.826.0.1.3680043.8.498.12",
    sop_uid="1.2.826.0.1.3680043.8.498.13",
    patient_name="NOBODY^NONE",
    patient_id="NONE",
)


# --- running them ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def send_raw(
    base_url: str,
    target: str,
    headers: Mapping[str, str] = {},
    method: str = "GET",
    body: bytes | None = None,
) -> Answer:
    """One request with `target` sent byte for byte as written (and `headers`' Host, if any,
    instead of the address's), with `body` if given."""
    address = urlsplit(base_url)
    assert address.hostname is not None and address.port is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    own_host = any(name.lower() == "host" for name in headers)
    try:
        connection.putrequest(method, target, skip_host=own_host, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return Answer(answer.status, answer.read())
    finally:
        connection.close()


def store_study(stack: Stack, directory: Path) -> StoredStudy:
    name = f"CANARY{secrets.token_hex(3).upper()}^GIVEN{secrets.token_hex(3).upper()}"
    patient_id = f"PIDCANARY{secrets.token_hex(4).upper()}"
    generated = make_study(
        directory, series_count=1, instances_per_series=1, patient_name=name, patient_id=patient_id
    )
    assert storescu_dcmtk(generated.files, *stack.dicom_address).all_success
    stack.wait_for_study(generated.study_instance_uid, instances=1)
    [found] = httpx.post(
        f"{stack.orthanc.url}/tools/lookup", content=generated.study_instance_uid, timeout=10
    ).json()
    series = generated.series[0]
    return StoredStudy(
        orthanc_id=found["ID"],
        study_uid=generated.study_instance_uid,
        series_uid=series.series_instance_uid,
        sop_uid=series.instances[0].sop_instance_uid,
        patient_name=name,
        patient_id=patient_id,
    )


def viewer_credentials(stack: Stack, stored: StoredStudy) -> dict[str, dict[str, str]]:
    """Bearer headers of an admin, a physician and a technologist, and of nobody. The physician
    orders for the stored study's patient: the study is in their care."""
    tokens = {"admin": STACK_ADMIN_PASSWORD}
    provider_id = f"DR-{secrets.token_hex(4).upper()}"
    for role in ("physician", "technologist"):
        password = f"{role}-password-{secrets.token_hex(4)}"
        user: dict[str, Any] = {"username": f"dr.{role}", "password": password, "role": role}
        if role == "physician":
            user["providerId"] = provider_id
        created = stack.api("POST", "/api/users", json=user)
        assert created.status_code == 201, created.text
        tokens[f"dr.{role}"] = password
    order = {
        "patientId": stored.patient_id,
        "patientName": stored.patient_name,
        "modality": "CT",
        "procedureDescription": "CT head",
        "providerId": provider_id,
    }
    ordered = stack.api("POST", "/api/imaging-orders", json=order)
    assert ordered.status_code == 201, ordered.text
    headers: dict[str, dict[str, str]] = {"nobody": {}}
    for username, password in tokens.items():
        headers[username] = {"Authorization": f"Bearer {stack.login(username, password)}"}
    return headers


def _orthanc_state(orthanc_url: str, stored: StoredStudy) -> dict[str, Any]:
    study = httpx.get(f"{orthanc_url}/studies/{stored.orthanc_id}", timeout=10)
    changes = httpx.get(f"{orthanc_url}/changes", params={"limit": 1000}, timeout=10).json()
    return {
        "study": study.status_code,
        "changes": len(changes["Changes"]),
        "last": changes["Last"],
        "patients": len(httpx.get(f"{orthanc_url}/patients", timeout=10).json()),
    }


def refusals_that_failed(
    front_url: str,
    orthanc_url: str,
    stored: StoredStudy,
    credentials: Mapping[str, Mapping[str, str]],
    *,
    exact: bool = True,
) -> list[str]:
    """Every hostile request with every credential; what went wrong, one line each. Not
    `exact`: anything but a 2xx or 5xx will do (nginx without its checks redirects /dicom-web
    to /dicom-web/ itself), not only the probe's status."""
    before = _orthanc_state(orthanc_url, stored)
    assert before["study"] == 200 and before["changes"] > 0, before
    failures = []
    for probe in HOSTILE:
        target = stored.fill(probe.target)
        for who, auth in credentials.items():
            answer = send_raw(front_url, target, {**auth, **probe.headers}, probe.method)
            if probe.status is not None and exact:
                wrong_status, expected = answer.status != probe.status, str(probe.status)
            elif exact:
                wrong_status, expected = not 400 <= answer.status < 500, "4xx"
            else:
                wrong_status, expected = not 300 <= answer.status < 500, "3xx or 4xx"
            if wrong_status:
                failures.append(
                    f"{probe.method} {target} ({probe.why}) as {who}: "
                    f"{answer.status}, expected {expected}"
                )
            text = answer.body.decode("latin-1")
            leaked = [secret for secret in stored.secrets if secret in text]
            if leaked:
                failures.append(f"{target} as {who}: the answer holds {leaked}")
    after = _orthanc_state(orthanc_url, stored)
    if after["study"] != 200:
        failures.append(f"the study is gone from Orthanc: {after}")
    if after["changes"] < before["changes"] or after["last"] < before["last"]:
        failures.append(f"Orthanc's change log was emptied: {before} -> {after}")
    if after["patients"] != before["patients"]:
        failures.append(f"Orthanc's patients changed: {before} -> {after}")
    return failures


def answers_that_failed(
    front_url: str, stored: StoredStudy, credentials: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """Every request the viewer makes, with every credential but nobody's: all answered 200,
    but a physician's search that names no study (it would search the whole archive), 403."""
    failures = []
    for probe in POSITIVE:
        target = stored.fill(probe.target)
        for who, auth in credentials.items():
            if not auth:
                continue
            expected = probe.status
            if who == "dr.physician" and "{uid}" not in probe.target:
                expected = 403
            answer = send_raw(front_url, target, {**auth, **probe.headers}, probe.method)
            if answer.status != expected:
                failures.append(
                    f"{target} ({probe.why}) as {who}: {answer.status} {answer.body[:200]!r}"
                )
    return failures


# --- what reaches Orthanc ----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    headers: dict[str, str]


class RecordingOrthanc:
    """An upstream standing in for Orthanc that records each request line and its headers, and
    answers an empty JSON list."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                recorder.received.append(Received(self.command, self.path, headers))
                body = b"[]"
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RecordingOrthanc:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# Allowed requests, each sent with headers Orthanc must not see: what reaches Orthanc is this
# target, byte for byte (the query's escapes kept, none added, no parameter re-encoded).
EXACT_TARGETS: tuple[str, ...] = (
    "/dicom-web/studies?PatientName=DOE%5EJANE&includefield=00081030%2C00080060&limit=25",
    "/dicom-web/studies?PatientName=DOE^JANE*&00100020=%2e%2e%2fpatients",
    "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1,2",
    "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/bulk/00540016/1/00181072",
    "/wado?requestType=WADO&studyUID=1.2.3&seriesUID=4.5&objectUID=6.7"
    "&contentType=application%2Fdicom",
)
KEPT_FROM_ORTHANC: Mapping[str, str] = {
    "Cookie": "viewer_session=not-for-orthanc",
    "X-Forwarded-For": "10.6.6.6",
    "X-Custom": "not-for-orthanc",
    "Forwarded": "proto=https;host=evil.example",
}


def unexpected_upstream_headers(received: Received, front_host: str) -> list[str]:
    """What Orthanc got beyond the forwarded headers (sidecar.viewer.paths) and the front's
    Host, Forwarded and Orthanc credential."""
    problems = [
        f"{name}: {value}"
        for name, value in received.headers.items()
        if name not in FORWARDED_REQUEST_HEADERS
        and name not in ("host", "forwarded", "connection", "authorization")
    ]
    if received.headers.get("host") != front_host:
        problems.append(f"host {received.headers.get('host')}, expected {front_host}")
    if received.headers.get("forwarded") != f"proto=http;host={front_host}":
        problems.append(f"forwarded {received.headers.get('forwarded')}")
    if "authorization" in received.headers:
        problems.append("the user's authorization")
    return problems


def check_exact_forwarding(
    front_url: str, headers: Mapping[str, str], orthanc: RecordingOrthanc
) -> None:
    """Through the front to `orthanc`: every EXACT_TARGETS answered 200, every hostile probe
    refused (4xx); Orthanc received exactly EXACT_TARGETS, as sent, with no header beyond what
    a read needs."""
    for target in EXACT_TARGETS:
        answer = send_raw(front_url, target, headers)
        assert answer.status == 200, (target, answer)
    for probe in HOSTILE:
        target = SAMPLE.fill(probe.target)
        refused = send_raw(front_url, target, {**headers, **probe.headers}, probe.method)
        assert 400 <= refused.status < 500, (target, refused.status)
    assert [r.target for r in orthanc.received] == list(EXACT_TARGETS)
    host = front_url.removeprefix("http://")
    assert [unexpected_upstream_headers(r, host) for r in orthanc.received] == [[]] * len(
        EXACT_TARGETS
    )
