"""A report's series metadata whole, through both viewer fronts, with the repository's own
Orthanc configuration (`SeriesMetadata: Extrapolate`, orthanc/orthanc.json): the series of an
AI result report (SR) answered as Orthanc's instance-level metadata serves it, content tree and
all, its bulk data URLs pointing at the front the request came through; an image series'
metadata still Orthanc's own answer, byte for byte the JSON Orthanc gives; the session, a
physician's care and the audit as for every DICOMweb read. Below the fronts: the sidecar's
record of a series decides, Orthanc's QIDO for a series it has not registered
(sidecar.viewer.series_metadata)."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydicom import Dataset, dcmread, dcmwrite
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import Request

from sidecar.analyses.findings import AnalyzerFinding, Box, ImageRef, Severity
from sidecar.analyses.structured_report import build_report, read_report
from sidecar.launcher.nginx import NGINX_CONF
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.studies.models import Series, Study
from sidecar.viewer.proxy import DicomWebProxy, FrontAddress
from sidecar.viewer.series_metadata import (
    METADATA_PREFIX,
    FullSeriesMetadata,
    asks_for_json,
    series_metadata_of,
)

from dicom_factory import make_study
from hostile_paths import send_raw
from stack import Stack

CONTENT_SEQUENCE = "0040A730"
ANATOMIC_REGION_SEQUENCE = "00082218"
# Answers read as sent: the sidecar's proxy lets Orthanc compress unless told otherwise.
ACCEPT_JSON = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
PRIVATE_BULK = "00091001"


@dataclass(frozen=True)
class ReportStudy:
    """Two CT images with a sequence in each, and the AI results' report on them, in Orthanc."""

    study_uid: str
    image_series: str
    report_series: str
    report_sop: str
    patient_id: str
    patient_name: str
    findings: list[AnalyzerFinding]

    @property
    def report_metadata(self) -> str:
        return f"/dicom-web/studies/{self.study_uid}/series/{self.report_series}/metadata"

    @property
    def image_metadata(self) -> str:
        return f"/dicom-web/studies/{self.study_uid}/series/{self.image_series}/metadata"

    @property
    def report_instance_metadata(self) -> str:
        return self.report_metadata.replace("/metadata", f"/instances/{self.report_sop}/metadata")


def as_file(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def store_report_study(orthanc_url: str, directory: Path) -> ReportStudy:
    generated = make_study(directory, series_count=1, instances_per_series=2)
    images = []
    for path in generated.files:
        image = dcmread(path)
        # A sequence, as modalities write them: Extrapolate leaves it out of series metadata.
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator = "51185008", "SCT"
        region.CodeMeaning = "Thorax"
        image.AnatomicRegionSequence = [region]
        images.append(image)
    findings = [
        AnalyzerFinding(
            model="quality",
            finding="clipped image",
            confidence=0.93,
            severity=Severity.HIGH,
            recommendation="Repeat the exposure.",
            image=ImageRef(
                study_instance_uid=generated.study_instance_uid,
                series_instance_uid=str(images[0].SeriesInstanceUID),
                sop_instance_uid=str(images[0].SOPInstanceUID),
                sop_class_uid=str(images[0].SOPClassUID),
            ),
            box=Box(x=8, y=12, width=20, height=16),
        )
    ]
    report = build_report(findings, images, analyzer_name="quality", analyzer_version="1.4.2")
    # A vendor's private binary element, which Orthanc serves as bulk data: its BulkDataURI
    # must name the front the viewer asked.
    report.private_block(0x0009, "ACME AI", create=True).add_new(0x01, "OB", b"\x01" * 64)
    for dataset in (*images, report):
        stored = httpx.post(f"{orthanc_url}/instances", content=as_file(dataset), timeout=30)
        assert stored.status_code == 200 and stored.json()["Status"] == "Success", stored.text
    return ReportStudy(
        study_uid=generated.study_instance_uid,
        image_series=str(images[0].SeriesInstanceUID),
        report_series=str(report.SeriesInstanceUID),
        report_sop=str(report.SOPInstanceUID),
        patient_id=generated.patient_id,
        patient_name=generated.patient_name,
        findings=findings,
    )


@pytest.fixture
def report_study(stack: Stack, tmp_path: Path) -> ReportStudy:
    stored = store_report_study(stack.orthanc.url, tmp_path / "dicom")
    stack.wait_for_study(stored.study_uid, instances=3)
    return stored


def orthanc_json(stack: Stack, target: str, host: str) -> Any:
    """Orthanc's own answer, its URLs written for the front at `host`."""
    answer = httpx.get(
        f"{stack.orthanc.url}{target}",
        headers={**ACCEPT_JSON, "Forwarded": f"proto=http;host={host}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def bulk_data_uris(instance: dict[str, Any]) -> list[str]:
    return [value["BulkDataURI"] for value in instance.values() if "BulkDataURI" in value]


def as_dataset(instance: dict[str, Any]) -> Dataset:
    return Dataset.from_json(instance, bulk_data_uri_handler=lambda *_: b"")


@pytest.mark.orthanc
def test_a_reports_series_metadata_is_whole_and_an_image_series_is_orthancs_own(
    stack: Stack, viewer_front_url: str, report_study: ReportStudy
) -> None:
    front, stored = viewer_front_url, report_study
    host = urlsplit(front).netloc
    admin = {"Authorization": f"Bearer {stack.login()}", **ACCEPT_JSON}

    answer = send_raw(front, stored.report_metadata, admin)
    assert answer.status == 200, answer.body[:300]
    [instance] = json.loads(answer.body)
    assert CONTENT_SEQUENCE in instance
    assert read_report(as_dataset(instance)).findings == stored.findings
    # What Orthanc's instance-level metadata gives, written for this front.
    assert [instance] == orthanc_json(stack, stored.report_instance_metadata, host)
    [bulk] = bulk_data_uris(instance)
    assert bulk == (
        f"{front}/dicom-web/studies/{stored.study_uid}/series/{stored.report_series}"
        f"/instances/{stored.report_sop}/bulk/{PRIVATE_BULK}"
    )
    bearer = {"Authorization": admin["Authorization"], "Accept-Encoding": "identity"}
    fetched = send_raw(front, urlsplit(bulk).path, bearer)
    assert fetched.status == 200 and b"\x01" * 64 in fetched.body
    # Orthanc's own Extrapolate answer lacks it: the reason for all this.
    extrapolated = orthanc_json(stack, stored.report_metadata, host)
    assert CONTENT_SEQUENCE not in extrapolated[0]

    # An image series: Orthanc's answer, unchanged, without the images' sequence.
    answer = send_raw(front, stored.image_metadata, admin)
    assert answer.status == 200
    images = json.loads(answer.body)
    assert images == orthanc_json(stack, stored.image_metadata, host)
    assert len(images) == 2
    assert not [tag for image in images for tag, value in image.items() if value["vr"] == "SQ"]
    image_series = stored.image_metadata.removesuffix("/metadata")
    first_image = orthanc_json(stack, f"{image_series}/instances", host)[0]["00080018"]["Value"][0]
    whole_image = orthanc_json(stack, f"{image_series}/instances/{first_image}/metadata", host)
    assert ANATOMIC_REGION_SEQUENCE in whole_image[0]

    # XML metadata is Orthanc's to answer.
    xml = {**admin, "Accept": "multipart/related; type=application/dicom+xml"}
    answer = send_raw(front, stored.report_metadata, xml)
    assert answer.status == 200 and b"<NativeDicomModel" in answer.body


@pytest.mark.orthanc
def test_a_reports_series_metadata_is_checked_as_every_dicomweb_read(
    stack: Stack, viewer_front_url: str, report_study: ReportStudy
) -> None:
    front, stored = viewer_front_url, report_study
    anonymous = send_raw(front, stored.report_metadata, ACCEPT_JSON)
    assert anonymous.status == 401
    provider_id = f"DR-{secrets.token_hex(4).upper()}"
    physicians = {}
    for name, provider in (("dr.elsewhere", None), ("dr.caring", provider_id)):
        password = f"pw-{secrets.token_hex(8)}"
        user = {"username": name, "password": password, "role": "physician"}
        if provider:
            user["providerId"] = provider
        assert stack.api("POST", "/api/users", json=user).status_code == 201
        physicians[name] = {"Authorization": f"Bearer {stack.login(name, password)}"}
    order = {
        "patientId": stored.patient_id,
        "patientName": stored.patient_name,
        "modality": "CT",
        "procedureDescription": "CT chest",
        "providerId": provider_id,
    }
    assert stack.api("POST", "/api/imaging-orders", json=order).status_code == 201

    outside = send_raw(front, stored.report_metadata, {**physicians["dr.elsewhere"], **ACCEPT_JSON})
    assert outside.status == 404
    assert stored.patient_id.encode() not in outside.body
    caring = send_raw(front, stored.report_metadata, {**physicians["dr.caring"], **ACCEPT_JSON})
    assert caring.status == 200
    [instance] = json.loads(caring.body)
    assert CONTENT_SEQUENCE in instance
    viewed = stack.api("GET", "/api/audit", params={"action": "study.viewed"}).json()["items"]
    assert [event["actor"] for event in viewed] == ["dr.caring"]


# --- below the fronts --------------------------------------------------------------------------


def _request(accept: str | None, method: str = "GET") -> Request:
    headers = [(b"accept", accept.encode())] if accept is not None else []
    return Request({"type": "http", "method": method, "headers": headers, "query_string": b""})


@pytest.mark.orthanc
def test_the_sidecars_record_decides_and_orthanc_for_a_series_it_has_not_registered(
    engine: Engine, plain_orthanc: OrthancProcess, tmp_path: Path
) -> None:
    stored = store_report_study(plain_orthanc.url, tmp_path / "dicom")
    front = FrontAddress("https", "viewer.hospital.test")
    proxy = DicomWebProxy(plain_orthanc.url)
    metadata = FullSeriesMetadata(engine, proxy)

    async def run() -> None:
        # Nothing registered: Orthanc's QIDO says which series is the report.
        assert await metadata.is_report(stored.study_uid, stored.report_series, front)
        assert not await metadata.is_report(stored.study_uid, stored.image_series, front)
        whole = await metadata.answer(
            _request("application/dicom+json"), stored.report_metadata, front
        )
        assert whole is not None and whole.media_type == "application/dicom+json"
        [instance] = json.loads(bytes(whole.body))
        assert read_report(as_dataset(instance)).findings == stored.findings
        [bulk] = bulk_data_uris(instance)
        assert bulk.startswith(
            f"https://viewer.hospital.test/dicom-web/studies/{stored.study_uid}/"
        )
        # Passed on: an image series, XML, a HEAD, another route, a series Orthanc lacks.
        passed_on = (
            (_request(None), stored.image_metadata),
            (_request("multipart/related; type=application/dicom+xml"), stored.report_metadata),
            (_request(None, method="HEAD"), stored.report_metadata),
            (_request(None), stored.report_instance_metadata),
            (_request(None), stored.report_metadata.replace(stored.report_series, "1.2.3")),
        )
        for request, target in passed_on:
            assert await metadata.answer(request, target, front) is None, target
        await proxy.aclose()

    asyncio.run(run())
    # Once registered, the sidecar's record decides, whatever Orthanc would say.
    with Session(engine) as session:
        study = Study(study_instance_uid=stored.study_uid)
        session.add(study)
        session.flush()
        assert study.id is not None
        session.add(
            Series(study_id=study.id, series_instance_uid=stored.report_series, modality="CT")
        )
        session.add(
            Series(study_id=study.id, series_instance_uid=stored.image_series, modality="pr")
        )
        session.commit()
    unreachable = FullSeriesMetadata(engine, DicomWebProxy("http://127.0.0.1:9"))

    async def from_the_record() -> tuple[bool, bool]:
        return (
            await unreachable.is_report(stored.study_uid, stored.report_series, front),
            await unreachable.is_report(stored.study_uid, stored.image_series, front),
        )

    assert asyncio.run(from_the_record()) == (False, True)


@pytest.mark.one_database
def test_which_requests_are_a_series_metadata_in_json() -> None:
    study, series = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"
    path = f"/dicom-web/studies/{study}/series/{series}/metadata"
    assert series_metadata_of(path) == (study, series)
    assert series_metadata_of(path + "?includefield=all") == (study, series)
    for other in (
        f"/dicom-web/studies/{study}/metadata",
        f"/dicom-web/studies/{study}/series/{series}/instances/1.2/metadata",
        f"/dicom-web/studies/{study}/series/{series}",
        f"{METADATA_PREFIX}{path}",
    ):
        assert series_metadata_of(other) is None, other
    for accept in (None, "", "application/dicom+json", "*/*", "text/html, application/json;q=0.9"):
        assert asks_for_json(accept), accept
    for accept in ("multipart/related; type=application/dicom+xml", "text/html"):
        assert not asks_for_json(accept), accept


@pytest.mark.one_database
def test_nginx_hands_a_series_metadata_to_the_sidecar_after_its_checks() -> None:
    conf = NGINX_CONF.read_text()
    head = 'location ~ "^/dicom-web/studies/[0-9][0-9.]{0,63}/series/[0-9][0-9.]{0,63}/metadata$" {'
    start = conf.index(head)
    block = conf[start : conf.index("\n    }\n", start)]
    lines = [line.strip() for line in block.splitlines()]
    assert lines[-1] == f"proxy_pass http://sidecar{METADATA_PREFIX}$request_uri;"
    checks = ("$dicomweb_verdict != forward", "$dicomweb_method_override", "$dicomweb_host_verdict")
    for check in checks:
        assert f"if ({check}) {{" in lines
    assert 'proxy_set_header Forwarded "proto=$scheme;host=$http_host";' in lines
    assert "auth_request" not in block  # the sidecar checks the session itself
