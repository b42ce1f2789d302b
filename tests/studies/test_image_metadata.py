"""PATCH /api/images/{id}/metadata: what readers keep about an image (a key-image flag, a label,
a display window preset), the sidecar's record only, never the DICOM file; its roles, audit
and every value it refuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.accounts.models import Role
from sidecar.studies.models import Image

from builders import UID_ROOT, SeriesSpec, audit_events, orthanc_study, seed_study
from testapp import engine_of

HeadersFor = Callable[[Role], dict[str, str]]
UID = f"{UID_ROOT}.7701"


@pytest.fixture
def engine(app: FastAPI) -> Engine:
    engine: Engine = engine_of(app)
    return engine


@pytest.fixture
def image_ids(engine: Engine) -> list[int]:
    """The two images of a seeded study (its DICOM window 40/400), in instance order."""
    study_id = seed_study(
        engine,
        orthanc_study(UID, series=[SeriesSpec(uid=f"{UID}.1", instances=2)]),
    )
    with Session(engine) as session:
        ids = session.exec(
            select(Image.id).where(Image.study_id == study_id).order_by(col(Image.id))
        ).all()
    return [i for i in ids if i is not None]


def patch(
    client: TestClient, headers: dict[str, str], image_id: int, body: Any
) -> Any:  # httpx.Response
    return client.patch(f"/api/images/{image_id}/metadata", headers=headers, json=body)


def image_row(engine: Engine, image_id: int) -> Image:
    with Session(engine) as session:
        image = session.get(Image, image_id)
        assert image is not None
        return image


def test_a_radiologist_marks_a_key_image_labels_it_and_keeps_a_window_preset(
    client: TestClient, radiologist: dict[str, str], engine: Engine, image_ids: list[int]
) -> None:
    before = image_row(engine, image_ids[0])
    body = {"keyImage": True, "label": "  Lesion 1 (RUL)  ", "windowCenter": -600}
    response = patch(client, radiologist, image_ids[0], {**body, "windowWidth": 1500})
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["keyImage"] is True
    assert shown["label"] == "Lesion 1 (RUL)"
    assert (shown["presetWindowCenter"], shown["presetWindowWidth"]) == (-600, 1500)
    # The file's own window is kept apart, unchanged.
    assert (shown["windowCenter"], shown["windowWidth"]) == (
        before.window_center,
        before.window_width,
    )
    # Shown by GET /api/images/{id} and the study's image list.
    assert client.get(f"/api/images/{image_ids[0]}", headers=radiologist).json() == shown
    listed = client.get(f"/api/studies/{before.study_id}/images", headers=radiologist).json()
    by_id = {item["id"]: item for item in listed["items"]}
    assert by_id[image_ids[0]] == shown
    assert by_id[image_ids[1]]["keyImage"] is False
    assert by_id[image_ids[1]]["label"] is None
    assert by_id[image_ids[1]]["presetWindowCenter"] is None

    [event] = audit_events(engine, "image.metadata_updated")
    assert event.actor == "radiologist-user"
    assert event.entity_type == "image" and event.entity_id == str(image_ids[0])
    assert event.detail["fields"] == ["keyImage", "label", "windowCenter", "windowWidth"]
    assert "Lesion" not in str(event.detail)


def test_only_changed_fields_are_audited_and_null_clears(
    client: TestClient, admin_headers: dict[str, str], engine: Engine, image_ids: list[int]
) -> None:
    image_id = image_ids[1]
    first = {"keyImage": True, "label": "A", "windowCenter": 40.5, "windowWidth": 400}
    assert patch(client, admin_headers, image_id, first).status_code == 200
    # The same values again: nothing changes, nothing is audited.
    assert patch(client, admin_headers, image_id, first).status_code == 200
    assert patch(client, admin_headers, image_id, {}).status_code == 200
    assert len(audit_events(engine, "image.metadata_updated")) == 1

    cleared = patch(
        client, admin_headers, image_id, {"label": None, "windowCenter": None, "windowWidth": None}
    )
    assert cleared.status_code == 200, cleared.text
    body = cleared.json()
    assert body["keyImage"] is True  # left out: kept
    assert (body["label"], body["presetWindowCenter"], body["presetWindowWidth"]) == (
        None,
        None,
        None,
    )
    last = audit_events(engine, "image.metadata_updated")[-1]
    assert last.detail["fields"] == ["label", "windowCenter", "windowWidth"]
    row = image_row(engine, image_id)
    assert (row.label, row.preset_window_center, row.preset_window_width) == (None, None, None)


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION])
def test_other_roles_are_refused(
    client: TestClient, headers_for: HeadersFor, engine: Engine, image_ids: list[int], role: Role
) -> None:
    response = patch(client, headers_for(role), image_ids[0], {"keyImage": True})
    assert response.status_code == 403, response.text
    assert image_row(engine, image_ids[0]).key_image is False
    assert audit_events(engine, "image.metadata_updated") == []


def test_without_a_token_it_is_401(client: TestClient, image_ids: list[int]) -> None:
    response = client.patch(f"/api/images/{image_ids[0]}/metadata", json={"keyImage": True})
    assert response.status_code == 401


def test_an_unknown_image_is_404(
    client: TestClient, radiologist: dict[str, str], image_ids: list[int]
) -> None:
    response = patch(client, radiologist, max(image_ids) + 1000, {"keyImage": True})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"label": "x" * 65}, id="label-65-characters"),
        pytest.param({"label": "x" * 100_000}, id="label-huge"),
        pytest.param({"label": "bad\x00label"}, id="label-nul"),
        pytest.param({"label": "two\nlines"}, id="label-newline"),
        pytest.param({"label": "bell\x07"}, id="label-control"),
        pytest.param({"label": "rtl\u202eoverride"}, id="label-bidi-override"),
        pytest.param({"label": "line\u2028separator"}, id="label-line-separator"),
        pytest.param({"label": ""}, id="label-empty"),
        pytest.param({"label": "   "}, id="label-blank"),
        pytest.param({"label": 12}, id="label-number"),
        pytest.param({"keyImage": None}, id="key-image-null"),
        pytest.param({"keyImage": "yes"}, id="key-image-text"),
        pytest.param({"keyImage": 1}, id="key-image-number"),
        pytest.param({"windowCenter": 40}, id="center-alone"),
        pytest.param({"windowWidth": 400}, id="width-alone"),
        pytest.param({"windowCenter": 40, "windowWidth": None}, id="center-without-width"),
        pytest.param({"windowCenter": None, "windowWidth": 400}, id="width-without-center"),
        pytest.param({"windowCenter": 40, "windowWidth": 0}, id="width-zero"),
        pytest.param({"windowCenter": 40, "windowWidth": -400}, id="width-negative"),
        pytest.param({"windowCenter": "40", "windowWidth": "400"}, id="window-as-text"),
        pytest.param({"windowCenter": 1e308, "windowWidth": 400}, id="center-huge"),
        pytest.param({"windowCenter": 40, "windowWidth": 1e12}, id="width-huge"),
        pytest.param({"windowCenter": True, "windowWidth": 400}, id="center-boolean"),
        pytest.param({"keyImage": True, "windowCentre": 40}, id="unknown-field"),
        pytest.param({"sopInstanceUID": "1.2.3"}, id="dicom-field"),
        pytest.param({"presetWindowCenter": 40, "presetWindowWidth": 400}, id="output-names"),
        pytest.param([{"keyImage": True}], id="not-an-object"),
    ],
)
def test_bad_values_are_refused_and_nothing_changes(
    client: TestClient,
    radiologist: dict[str, str],
    engine: Engine,
    image_ids: list[int],
    body: Any,
) -> None:
    response = patch(client, radiologist, image_ids[0], body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    row = image_row(engine, image_ids[0])
    assert (row.key_image, row.label, row.preset_window_center) == (False, None, None)
    assert audit_events(engine, "image.metadata_updated") == []


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(
    client: TestClient, radiologist: dict[str, str], image_ids: list[int], text: str
) -> None:
    response = client.patch(
        f"/api/images/{image_ids[0]}/metadata",
        headers={**radiologist, "Content-Type": "application/json"},
        content=f'{{"windowCenter": {text}, "windowWidth": 400}}',
    )
    assert response.status_code == 422, response.text


def test_a_label_of_64_characters_and_any_script_is_kept(
    client: TestClient, radiologist: dict[str, str], image_ids: list[int]
) -> None:
    label = ("Läsion 肺 " * 10)[:64]
    response = patch(client, radiologist, image_ids[0], {"label": label})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == label.strip()


def test_a_non_numeric_image_id_is_refused(client: TestClient, radiologist: dict[str, str]) -> None:
    response = patch(client, radiologist, "1;DROP", {"keyImage": True})  # type: ignore[arg-type]
    assert response.status_code == 422
    for beyond in (2**31, 2**63):
        assert patch(client, radiologist, beyond, {"keyImage": True}).status_code == 422
