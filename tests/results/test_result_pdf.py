"""RESULTS_EMBED_PDF: the ORU^R01 carries the report as a PDF in an OBX of type ED (base64, per
HL7 v2.5.1), delivered over MLLP to a HIS on loopback; decoded, it is the PDF the API renders."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pypdf import PdfReader

from sidecar.core.settings import Settings

from his_simulator import HisSimulator
from reporting import SECTIONS, ordered_study, sign, write_report

Headers = dict[str, str]


@pytest.fixture
def his() -> Iterator[HisSimulator]:
    with HisSimulator() as running:
        yield running


@pytest.fixture
def settings(settings: Settings, his: HisSimulator) -> Settings:
    return settings.model_copy(
        update={
            "his_mllp_host": "127.0.0.1",
            "his_mllp_port": his.port,
            "his_mllp_timeout": 2.0,
            "his_status_updates": False,  # the result alone (status updates: test_status_updates)
            "results_embed_pdf": True,
            "department_name": "North Imaging",
        }
    )


def embedded_pdfs(raw: str) -> list[bytes]:
    found = []
    for segment in raw.split("\r"):
        fields = segment.split("|")
        if fields[0] == "OBX" and fields[2] == "ED":
            assert fields[3] == "18748-4^Diagnostic imaging study^LN"
            source, kind, subtype, encoding, data = fields[5].split("^")
            assert (source, kind, subtype, encoding) == ("", "AP", "PDF", "Base64")
            found.append(base64.b64decode(data, validate=True))
    return found


def test_the_oru_carries_the_pdf_the_api_renders(
    app: FastAPI,
    client: TestClient,
    his: HisSimulator,
    radiologist: Headers,
    technologist: Headers,
) -> None:
    study_id, _ = ordered_study(app, client, technologist)
    report = sign(client, radiologist, write_report(client, radiologist, study_id)["id"])

    (received,) = his.wait_for(1)
    (pdf,) = embedded_pdfs(received.raw)
    rendered = client.get(
        f"/api/reports/{report['id']}/rendering", params={"format": "pdf"}, headers=radiologist
    )
    assert rendered.status_code == 200
    assert pdf == rendered.content
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert "North Imaging" in text
    assert " ".join(SECTIONS["impression"].split()) in text
    assert "Signed by radiologist-user" in text
    # The segments after it are intact: the study UID still closes the message.
    assert received.raw.rstrip("\r").split("\r")[-1].split("|")[2] == "ST"
