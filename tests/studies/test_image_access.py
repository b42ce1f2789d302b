"""Signed image links, previews and study thumbnails (issue 15, items 3 and 4), against a real
Orthanc holding a real study: the sidecar's Study, Series and Image rows are seeded pointing at
Orthanc's instances (as the sync would write them), and the app reads Orthanc through a client
that counts the renderings it asks for.

One Orthanc (without the plugin) serves the module; each test has its own database (both
databases) and its own cache directory."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image as PillowImage
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlmodel import Session

from sidecar.accounts.models import Role
from sidecar.core.settings import Settings
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.launcher.orthanc import OrthancProcess
from sidecar.main import create_app
from sidecar.studies.models import Image, Series, Study, StudyStatus
from sidecar.studies.thumbnails import THUMBNAIL_SIZE, Rendering, ThumbnailCache

from account_helpers import now_clock
from builders import audit_events
from dicom_factory import GeneratedStudy, make_study
from finding_helpers import FakeClock
from testapp import PHYSICIAN_PROVIDER_ID, app_settings, engine_of, login

pytestmark = pytest.mark.orthanc

HeadersFor = Callable[[Role], dict[str, str]]
PUBLIC_URL = "https://sidecar.example.org"
ROWS, COLUMNS = 60, 40
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def orthanc(plain_orthanc: OrthancProcess) -> OrthancProcess:
    return plain_orthanc


class StoredStudy:
    """A generated study stored in Orthanc: two series of three instances."""

    def __init__(self, images: GeneratedStudy, instance_ids: dict[str, str], study: str) -> None:
        self.images = images
        self.orthanc_ids = instance_ids  # SOP Instance UID -> Orthanc instance id
        self.orthanc_study_id = study


@pytest.fixture(scope="module")
def stored(orthanc: OrthancProcess, tmp_path_factory: pytest.TempPathFactory) -> StoredStudy:
    images = make_study(
        tmp_path_factory.mktemp("dicom"),
        series_count=2,
        instances_per_series=3,
        rows=ROWS,
        columns=COLUMNS,
    )
    ids = {}
    study = ""
    for instance in images.instances:
        answer = httpx.post(f"{orthanc.url}/instances", content=instance.path.read_bytes())
        answer.raise_for_status()
        ids[instance.sop_instance_uid] = answer.json()["ID"]
        study = answer.json()["ParentStudy"]
    return StoredStudy(images, ids, study)


class CountingOrthanc(OrthancClient):
    """The app's Orthanc client, recording the renderings it asks Orthanc for."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, timeout=30)
        self.rendered: list[str] = []

    def instance_preview(self, instance_id: str) -> bytes:
        self.rendered.append(instance_id)
        return super().instance_preview(instance_id)

    def instance_rendered(
        self, instance_id: str, media_type: str, *, max_size: int | None = None
    ) -> bytes:
        self.rendered.append(instance_id)
        return super().instance_rendered(instance_id, media_type, max_size=max_size)


@pytest.fixture
def clock() -> FakeClock:
    return now_clock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, orthanc: OrthancProcess) -> Settings:
    return app_settings(database_url, tmp_path, orthanc_url=orthanc.url, public_url=PUBLIC_URL)


@pytest.fixture
def counting(orthanc: OrthancProcess) -> CountingOrthanc:
    return CountingOrthanc(orthanc.url)


@pytest.fixture
def app(settings: Settings, counting: CountingOrthanc, clock: FakeClock) -> FastAPI:
    return create_app(settings, orthanc=counting, clock=clock)


class Seeded:
    def __init__(self, study_id: int, image_ids: dict[str, int]) -> None:
        self.study_id = study_id
        self.image_ids = image_ids  # SOP Instance UID -> Image.id


def seed(app: FastAPI, stored: StoredStudy) -> Seeded:
    """The sidecar's rows for the stored study, as the sync writes them; the second series
    (series number 2) is written first, so that row order is not series order."""
    images = stored.images
    with Session(engine_of(app)) as session:
        study = Study(
            study_instance_uid=images.study_instance_uid,
            patient_id=images.patient_id,
            accession_number=images.accession_number,
            orthanc_id=stored.orthanc_study_id,
            status=StudyStatus.COMPLETED,
            series_count=len(images.series),
            instance_count=images.instance_count,
        )
        session.add(study)
        session.flush()
        assert study.id is not None
        rows: dict[str, Image] = {}
        for generated in reversed(images.series):
            series = Series(
                study_id=study.id,
                series_instance_uid=generated.series_instance_uid,
                series_number=generated.series_number,
                modality=generated.modality,
                instance_count=len(generated.instances),
            )
            session.add(series)
            session.flush()
            assert series.id is not None
            for instance in reversed(generated.instances):
                rows[instance.sop_instance_uid] = Image(
                    study_id=study.id,
                    series_id=series.id,
                    sop_instance_uid=instance.sop_instance_uid,
                    sop_class_uid=instance.sop_class_uid,
                    instance_number=instance.instance_number,
                    rows=instance.rows,
                    columns=instance.columns,
                    orthanc_id=stored.orthanc_ids[instance.sop_instance_uid],
                )
                session.add(rows[instance.sop_instance_uid])
        session.commit()
        return Seeded(study.id, {uid: row.id for uid, row in rows.items() if row.id})


@pytest.fixture
def seeded(app: FastAPI, client: TestClient, stored: StoredStudy) -> Seeded:
    return seed(app, stored)


def first_image(stored: StoredStudy, seeded: Seeded) -> tuple[int, Any]:
    instance = stored.images.series[0].instances[0]
    return seeded.image_ids[instance.sop_instance_uid], instance


def link(client: TestClient, headers: dict[str, str], image_id: int, **params: str) -> str:
    answer = client.get(f"/api/images/{image_id}/url", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "private, no-store"
    url: str = answer.json()["url"]
    assert url.startswith(f"{PUBLIC_URL}/api/images/{image_id}/file?")
    return url


def local(url: str) -> str:
    """The link's path and query, for the TestClient (the link is on PUBLIC_URL)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def png_size(content: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    assert content[:8] == PNG_SIGNATURE
    assert content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    return width, height


def message(answer: httpx.Response) -> str:
    return str(answer.json()["error"]["message"])


# --- signed links ------------------------------------------------------------------------------


def test_signed_links_fetch_the_image_without_a_token_in_each_format(
    app: FastAPI,
    client: TestClient,
    admin_headers: dict[str, str],
    stored: StoredStudy,
    seeded: Seeded,
    clock: FakeClock,
) -> None:
    image_id, instance = first_image(stored, seeded)
    answer = client.get(f"/api/images/{image_id}/url", headers=admin_headers).json()
    expires_in = parse_iso(answer["expiresAt"]) - clock.now.timestamp()
    assert 15 * 60 - 1 <= expires_in <= 15 * 60
    assert parse_qs(urlsplit(answer["url"]).query)["format"] == ["dicom"]

    dicom = client.get(local(answer["url"]))  # no Authorization header
    assert dicom.status_code == 200, dicom.text
    assert dicom.headers["content-type"] == "application/dicom"
    assert dicom.headers["cache-control"] == "private, no-store"
    parsed = pydicom.dcmread(io.BytesIO(dicom.content))
    assert parsed.SOPInstanceUID == instance.sop_instance_uid
    assert parsed.StudyInstanceUID == stored.images.study_instance_uid

    png = client.get(local(link(client, admin_headers, image_id, format="png")))
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "private, no-store"
    assert png_size(png.content) == (COLUMNS, ROWS)
    assert PillowImage.open(io.BytesIO(png.content)).size == (COLUMNS, ROWS)

    jpeg = client.get(local(link(client, admin_headers, image_id, format="jpeg")))
    assert jpeg.status_code == 200, jpeg.text
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.headers["cache-control"] == "private, no-store"
    assert jpeg.content[:2] == b"\xff\xd8"
    assert PillowImage.open(io.BytesIO(jpeg.content)).size == (COLUMNS, ROWS)

    engine = engine_of(app)
    created = audit_events(engine, "image.link_created")
    assert [(e.actor, e.entity_id, e.detail["format"]) for e in created] == [
        ("admin", str(image_id), "dicom"),
        ("admin", str(image_id), "png"),
        ("admin", str(image_id), "jpeg"),
    ]
    used = audit_events(engine, "image.link_used")
    assert [(e.entity_type, e.entity_id, e.detail["format"]) for e in used] == [
        ("image", str(image_id), "dicom"),
        ("image", str(image_id), "png"),
        ("image", str(image_id), "jpeg"),
    ]
    assert all(e.actor == "signed-link" for e in used)


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_an_altered_incomplete_or_expired_link_answers_403(
    app: FastAPI,
    client: TestClient,
    admin_headers: dict[str, str],
    stored: StoredStudy,
    seeded: Seeded,
    clock: FakeClock,
) -> None:
    image_id, _ = first_image(stored, seeded)
    other_id = seeded.image_ids[stored.images.series[1].instances[0].sop_instance_uid]
    url = link(client, admin_headers, image_id, format="png")
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    path = f"/api/images/{image_id}/file"

    def fetch(target: str, **changes: str | None) -> httpx.Response:
        values = {k: v for k, v in {**query, **changes}.items() if v is not None}
        answer: httpx.Response = client.get(f"{target}?{urlencode(values)}")
        return answer

    signature = query["signature"]
    tampered = ("A" if signature[0] != "A" else "B") + signature[1:]
    refused = {
        "tampered signature": fetch(path, signature=tampered),
        "another image": fetch(f"/api/images/{other_id}/file"),
        "another format": fetch(path, format="jpeg"),
        "dicom instead": fetch(path, format="dicom"),
        "unknown format": fetch(path, format="tiff"),
        "later expiry": fetch(path, expires=str(int(query["expires"]) + 3600)),
        "malformed expiry": fetch(path, expires="soon"),
        "superscript digit expiry": fetch(path, expires="\u00b2"),  # isdigit(), not int()
    }
    for case, answer in refused.items():
        assert answer.status_code == 403, case
        assert "signature does not match" in message(answer), case
    for name in ("format", "expires", "signature"):
        answer = fetch(path, **{name: None})
        assert answer.status_code == 403, name
        assert f"incomplete (no {name})" in message(answer)
    assert client.get(path).status_code == 403

    clock.advance(minutes=14, seconds=59)
    assert fetch(path).status_code == 200
    clock.advance(seconds=1)
    expired = fetch(path)
    assert expired.status_code == 403
    assert "expired" in message(expired)
    # Refusals are not uses: one audited use, the one that worked.
    assert len(audit_events(engine_of(app), "image.link_used")) == 1


def test_links_follow_who_may_read_the_study(
    client: TestClient,
    headers_for: HeadersFor,
    admin_headers: dict[str, str],
    stored: StoredStudy,
    seeded: Seeded,
) -> None:
    image_id, _ = first_image(stored, seeded)
    url = f"/api/images/{image_id}/url"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=headers_for(Role.INTEGRATION)).status_code == 403
    assert client.get(url, headers=headers_for(Role.TECHNOLOGIST)).status_code == 200
    assert client.get(url, headers=headers_for(Role.RADIOLOGIST)).status_code == 200
    physician = headers_for(Role.PHYSICIAN)
    outside = client.get(url, headers=physician)
    assert outside.status_code == 404
    assert message(outside) == f"image {image_id} not found"
    thumbnail = f"/api/studies/{seeded.study_id}/thumbnail"
    assert client.get(thumbnail, headers=physician).status_code == 404
    assert client.get(f"/api/images/{image_id}/preview", headers=physician).status_code == 404
    # An order naming the physician puts the patient in their care.
    order = client.post(
        "/api/imaging-orders",
        json={
            "patientId": stored.images.patient_id,
            "modality": "CT",
            "procedureDescription": "CT head",
            "providerId": PHYSICIAN_PROVIDER_ID,
        },
        headers=admin_headers,
    )
    assert order.status_code == 201, order.text
    assert client.get(local(link(client, physician, image_id))).status_code == 200
    assert client.get(thumbnail, headers=physician).status_code == 200
    assert client.get(url, params={"format": "gif"}, headers=physician).status_code == 422
    assert client.get("/api/images/999999/url", headers=admin_headers).status_code == 404


def test_image_url_minutes_is_at_most_60(database_url: str, tmp_path: Path) -> None:
    assert app_settings(database_url, tmp_path).image_url_minutes == 15
    with pytest.raises(ValidationError):
        app_settings(database_url, tmp_path, image_url_minutes=61)
    with pytest.raises(ValidationError):
        app_settings(database_url, tmp_path, image_url_minutes=0)


def test_link_lifetime_follows_the_setting(
    database_url: str, tmp_path: Path, orthanc: OrthancProcess, stored: StoredStudy
) -> None:
    clock = now_clock()
    settings = app_settings(
        database_url,
        tmp_path,
        orthanc_url=orthanc.url,
        public_url=PUBLIC_URL,
        image_url_minutes=2,
    )
    app = create_app(settings, clock=clock)
    with TestClient(app) as client:
        seeded = seed(app, stored)
        image_id, _ = first_image(stored, seeded)
        url = local(link(client, login(client, "admin", settings.admin_password), image_id))
        clock.advance(minutes=1, seconds=59)
        assert client.get(url).status_code == 200
        clock.advance(seconds=1)
        assert client.get(url).status_code == 403


# --- previews and thumbnails -------------------------------------------------------------------


def test_study_thumbnail_is_the_middle_image_of_the_first_series_and_is_cached(
    app: FastAPI,
    orthanc: OrthancProcess,
    client: TestClient,
    admin_headers: dict[str, str],
    stored: StoredStudy,
    seeded: Seeded,
    counting: CountingOrthanc,
    settings: Settings,
) -> None:
    middle = stored.images.series[0].instances[1]  # series number 1, instance number 2
    expected = stored.orthanc_ids[middle.sop_instance_uid]
    # A report series numbered before it: nothing to draw, passed over.
    report, report_id = stored_report_instance(orthanc)
    with Session(engine_of(app)) as session:
        series = Series(
            study_id=seeded.study_id, series_instance_uid=report.SeriesInstanceUID, series_number=0
        )
        session.add(series)
        session.flush()
        assert series.id is not None
        session.add(
            Image(
                study_id=seeded.study_id,
                series_id=series.id,
                sop_instance_uid=report.SOPInstanceUID,
                orthanc_id=report_id,
            )
        )
        session.commit()
    url = f"/api/studies/{seeded.study_id}/thumbnail"

    first = client.get(url, headers=admin_headers)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png"
    assert first.headers["cache-control"] == "private, max-age=300"
    width, height = png_size(first.content)
    assert max(width, height) <= THUMBNAIL_SIZE
    assert counting.rendered == [expected]
    cached = settings.data_dir / "thumbnails" / f"{expected}.thumbnail.png"
    assert cached.read_bytes() == first.content
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]

    again = client.get(url, headers=admin_headers)
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert counting.rendered == [expected]  # from the cache: Orthanc was not asked again

    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        not_modified = client.get(url, headers={**admin_headers, "If-None-Match": header})
        assert not_modified.status_code == 304, header
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
    changed = client.get(url, headers={**admin_headers, "If-None-Match": '"other"'})
    assert changed.status_code == 200
    assert counting.rendered == [expected]


def test_image_preview_is_the_full_size_png_and_is_cached(
    client: TestClient,
    headers_for: HeadersFor,
    stored: StoredStudy,
    seeded: Seeded,
    counting: CountingOrthanc,
) -> None:
    image_id, instance = first_image(stored, seeded)
    url = f"/api/images/{image_id}/preview"
    technologist = headers_for(Role.TECHNOLOGIST)
    first = client.get(url, headers=technologist)
    assert first.status_code == 200, first.text
    assert png_size(first.content) == (COLUMNS, ROWS)
    assert PillowImage.open(io.BytesIO(first.content)).size == (COLUMNS, ROWS)
    assert first.headers["cache-control"] == "private, max-age=300"
    again = client.get(url, headers=headers_for(Role.RADIOLOGIST))
    assert again.content == first.content
    assert counting.rendered == [stored.orthanc_ids[instance.sop_instance_uid]]
    etag = first.headers["etag"]
    assert client.get(url, headers={**technologist, "If-None-Match": etag}).status_code == 304
    assert client.get(url).status_code == 401
    assert client.get(url, headers=headers_for(Role.INTEGRATION)).status_code == 403
    assert client.get("/api/images/999999/preview", headers=technologist).status_code == 404


def test_a_study_without_images_has_no_thumbnail(
    app: FastAPI, client: TestClient, admin_headers: dict[str, str]
) -> None:
    with Session(engine_of(app)) as session:
        study = Study(study_instance_uid="1.2.826.0.1.3680043.8.498.1", patient_id="P-EMPTY")
        session.add(study)
        session.commit()
        study_id = study.id
    answer = client.get(f"/api/studies/{study_id}/thumbnail", headers=admin_headers)
    assert answer.status_code == 404
    assert message(answer) == f"study {study_id} has no images yet: no thumbnail to show"
    assert client.get("/api/studies/999999/thumbnail", headers=admin_headers).status_code == 404


def test_orthanc_down_answers_503(database_url: str, tmp_path: Path, stored: StoredStudy) -> None:
    """The default test settings point at a closed port: Orthanc is down."""
    settings = app_settings(database_url, tmp_path, public_url=PUBLIC_URL)
    app = create_app(settings)
    with TestClient(app) as client:
        seeded = seed(app, stored)
        image_id, _ = first_image(stored, seeded)
        admin = login(client, "admin", settings.admin_password)
        for url in (
            f"/api/studies/{seeded.study_id}/thumbnail",
            f"/api/images/{image_id}/preview",
            local(link(client, admin, image_id)),
            local(link(client, admin, image_id, format="jpeg")),
        ):
            answer = client.get(url, headers=admin)
            assert answer.status_code == 503, url
            assert "Orthanc is not answering" in message(answer)
        # Nothing was kept and no use was recorded.
        assert not (settings.data_dir / "thumbnails").exists()
        assert audit_events(engine_of(app), "image.link_used") == []


def stored_report_instance(orthanc: OrthancProcess) -> tuple[Dataset, str]:
    """A structured report (no pixel data) stored in Orthanc: its dataset and Orthanc id."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "P-SR"
    dataset.Modality = "SR"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    written = io.BytesIO()
    pydicom.dcmwrite(written, dataset, enforce_file_format=True)
    answer = httpx.post(f"{orthanc.url}/instances", content=written.getvalue())
    answer.raise_for_status()
    return dataset, str(answer.json()["ID"])


def test_an_image_orthanc_cannot_draw_answers_409_and_its_file_is_still_linked(
    app: FastAPI,
    client: TestClient,
    admin_headers: dict[str, str],
    orthanc: OrthancProcess,
) -> None:
    dataset, orthanc_id = stored_report_instance(orthanc)
    with Session(engine_of(app)) as session:
        study = Study(study_instance_uid=dataset.StudyInstanceUID, patient_id="P-SR")
        session.add(study)
        session.flush()
        assert study.id is not None
        series = Series(study_id=study.id, series_instance_uid=dataset.SeriesInstanceUID)
        session.add(series)
        session.flush()
        assert series.id is not None
        image = Image(
            study_id=study.id,
            series_id=series.id,
            sop_instance_uid=dataset.SOPInstanceUID,
            orthanc_id=orthanc_id,
        )
        session.add(image)
        session.commit()
        study_id, image_id = study.id, image.id
    assert image_id is not None
    for url in (f"/api/images/{image_id}/preview", f"/api/studies/{study_id}/thumbnail"):
        answer = client.get(url, headers=admin_headers)
        assert answer.status_code == 409, url
        assert "cannot render" in message(answer)
    png = client.get(local(link(client, admin_headers, image_id, format="png")))
    assert png.status_code == 409
    dicom = client.get(local(link(client, admin_headers, image_id)))
    assert dicom.status_code == 200
    assert pydicom.dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == dataset.SOPInstanceUID
    used = audit_events(engine_of(app), "image.link_used")
    assert [e.detail["format"] for e in used] == ["dicom"]


def test_the_cache_removes_the_least_recently_used_files_past_its_bound(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path / "thumbnails", max_bytes=250)
    ids = [f"{n:08x}-00000000-00000000-00000000-00000000" for n in range(4)]
    for number, orthanc_id in enumerate(ids[:2]):
        cache.put(orthanc_id, Rendering.THUMBNAIL, bytes([number]) * 100)
        os.utime(cache.path(orthanc_id, Rendering.THUMBNAIL), ns=(number, number))
    assert cache.get(ids[0], Rendering.THUMBNAIL) == bytes([0]) * 100  # used: now the newest
    cache.put(ids[2], Rendering.THUMBNAIL, b"\x02" * 100)  # 300 bytes: the oldest goes
    assert cache.get(ids[1], Rendering.THUMBNAIL) is None
    assert cache.get(ids[0], Rendering.THUMBNAIL) is not None
    assert cache.get(ids[2], Rendering.THUMBNAIL) is not None
    assert cache.get(ids[0], Rendering.PREVIEW) is None  # kinds are kept apart
    assert sorted(p.name for p in cache.directory.iterdir()) == sorted(
        f"{i}.thumbnail.png" for i in (ids[0], ids[2])
    )
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd", Rendering.PREVIEW)
