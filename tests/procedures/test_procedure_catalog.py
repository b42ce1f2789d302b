"""The procedure catalog over the API: administrators manage it (entries and CSV imports, every
change audited); a CSV import is all or nothing, and a bad file is refused 422 naming each row
and column at fault, with nothing imported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role
from sidecar.procedures.csv_file import MAX_BYTES

Headers = dict[str, str]
HeadersFor = Callable[[Role], Headers]

CHEST = {
    "code": "71020",
    "codingSystem": "C4",
    "description": "XR chest 2 views",
    "modality": "DX",
    "bodyPart": "CHEST",
    "stationAeTitle": "DX01",
    "stationName": "DX ROOM 1",
    "protocolCode": "CHEST-PA-LAT",
    "expectedMinutes": 15,
    "priority": "ROUTINE",
}
HEADER = (
    "code,codingSystem,description,modality,bodyPart,stationAeTitle,stationName,protocolCode,"
    "expectedMinutes,priority"
)
GOOD_CSV = (
    f"{HEADER}\r\n"
    "71020,C4,XR chest 2 views,DX,CHEST,DX01,DX ROOM 1,CHEST-PA-LAT,15,ROUTINE\r\n"
    '74177,C4,"CT abdomen, pelvis with contrast",CT,ABDOMEN,CT01,CT 1,ABD-PEL-C,30,\r\n'
    "MRBRAIN,,MR brain,MR,,MR01,,,45,URGENT\r\n"
)


def upload(client: TestClient, headers: Headers, data: bytes | str) -> Any:
    body = data.encode() if isinstance(data, str) else data
    return client.post(
        "/api/procedures/import", files={"file": ("catalog.csv", body, "text/csv")}, headers=headers
    )


def catalog(client: TestClient, headers: Headers) -> dict[str, dict[str, Any]]:
    items = client.get("/api/procedures", params={"limit": 1000}, headers=headers).json()["items"]
    return {item["code"]: item for item in items}


def test_an_administrator_manages_entries_and_every_change_is_audited(
    client: TestClient, admin_headers: Headers
) -> None:
    created = client.post("/api/procedures", json=CHEST, headers=admin_headers)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert {k: entry[k] for k in CHEST} == CHEST
    url = f"/api/procedures/{entry['id']}"
    assert client.get(url, headers=admin_headers).json()["code"] == "71020"

    again = client.post("/api/procedures", json=CHEST, headers=admin_headers)
    assert again.status_code == 409, again.text

    changed = client.patch(url, json={"stationAeTitle": "DX02"}, headers=admin_headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["stationAeTitle"] == "DX02"
    found = client.get("/api/procedures", params={"stationAeTitle": "DX02"}, headers=admin_headers)
    assert [i["code"] for i in found.json()["items"]] == ["71020"]
    refused = client.patch(url, json={"modality": None}, headers=admin_headers)
    assert refused.status_code == 422

    assert client.delete(url, headers=admin_headers).status_code == 204
    assert client.get(url, headers=admin_headers).status_code == 404
    actions = [
        event["action"]
        for event in client.get(
            "/api/audit", params={"entityType": "procedure", "limit": 100}, headers=admin_headers
        ).json()["items"]
    ]
    assert sorted(actions) == ["procedure.created", "procedure.deleted", "procedure.updated"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("code", "X" * 17),  # DICOM Code Value is SH
        ("code", "   "),
        ("code", "A\\B"),  # a backslash separates DICOM values
        ("stationAeTitle", "DX01-TOO-LONG-AET"),
        ("stationAeTitle", "DX\x0701"),
        ("stationName", "S" * 17),
        ("description", "D" * 65),
        ("protocolCode", "P\\Q"),
        ("modality", "XX"),
        ("priority", "HIGH"),
        ("expectedMinutes", 0),
        ("expectedMinutes", 24 * 60 + 1),
    ],
)
def test_values_are_checked_by_the_dicom_rules_of_the_worklist(
    client: TestClient, admin_headers: Headers, field: str, value: Any
) -> None:
    answer = client.post("/api/procedures", json={**CHEST, field: value}, headers=admin_headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["location"] == f"body.{field}"


@pytest.mark.parametrize("role", [Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.PHYSICIAN])
def test_only_administrators_change_the_catalog(
    client: TestClient, admin_headers: Headers, headers_for: HeadersFor, role: Role
) -> None:
    entry = client.post("/api/procedures", json=CHEST, headers=admin_headers).json()
    headers = headers_for(role)
    url = f"/api/procedures/{entry['id']}"
    assert client.post("/api/procedures", json=CHEST, headers=headers).status_code == 403
    assert client.patch(url, json={"stationName": "X"}, headers=headers).status_code == 403
    assert client.delete(url, headers=headers).status_code == 403
    assert upload(client, headers, GOOD_CSV).status_code == 403
    # Those who create orders read it; a physician has no use for it.
    expected = 403 if role == Role.PHYSICIAN else 200
    assert client.get(url, headers=headers).status_code == expected
    assert client.get("/api/procedures", headers=headers).status_code == expected
    assert catalog(client, admin_headers)["71020"]["stationName"] == "DX ROOM 1"


def test_a_csv_import_creates_and_updates_codes(client: TestClient, admin_headers: Headers) -> None:
    answer = upload(client, admin_headers, b"\xef\xbb\xbf" + GOOD_CSV.encode())  # Excel's BOM
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"rows": 3, "created": 3, "updated": 0}
    entries = catalog(client, admin_headers)
    assert {k: entries["71020"][k] for k in CHEST} == CHEST
    assert entries["74177"]["description"] == "CT abdomen, pelvis with contrast"
    assert entries["74177"]["priority"] is None
    assert entries["MRBRAIN"]["priority"] == "URGENT"

    # The columns a file has replace the values (an empty cell clears one); others are kept.
    second = "code,modality,stationAeTitle\n71020,DX,DX02\nNEW1,US,\n74177,CT,\n"
    answer = upload(client, admin_headers, second)
    assert answer.json() == {"rows": 3, "created": 1, "updated": 2}, answer.text
    entries = catalog(client, admin_headers)
    assert entries["71020"]["stationAeTitle"] == "DX02"
    assert entries["71020"]["protocolCode"] == "CHEST-PA-LAT"
    assert entries["74177"]["stationAeTitle"] is None
    assert entries["NEW1"]["modality"] == "US"
    audit = client.get(
        "/api/audit", params={"action": "procedure.imported"}, headers=admin_headers
    ).json()["items"]
    assert sorted(event["detail"]["created"] for event in audit) == [1, 3]


def test_a_catalog_of_five_thousand_codes_imports_in_one_request(
    client: TestClient, admin_headers: Headers
) -> None:
    rows = "".join(f"P{n:05d},CT,CT{n % 7:02d}\n" for n in range(5000))
    answer = upload(client, admin_headers, "code,modality,stationAeTitle\n" + rows)
    assert answer.json() == {"rows": 5000, "created": 5000, "updated": 0}, answer.text
    page = client.get("/api/procedures", params={"code": "P04999"}, headers=admin_headers).json()
    assert page["items"][0]["stationAeTitle"] == "CT01"  # 4999 % 7


#: Over the limit by a little: within the multipart envelope's allowance, refused on the file.
JUST_OVER = "code,modality\n" + "".join(f"C{n:07d},CT\n" for n in range(MAX_BYTES // 12 + 10))


@pytest.mark.parametrize(
    ("data", "location", "words"),
    [
        ("code;modality\nX;CT\n", "file.row[1]", "not one of"),  # semicolons: one column
        ("code,modality,color\nX,CT,red\n", "file.row[1]", "'color'"),
        ("code,description\nX,chest\n", "file.row[1]", "no modality column"),
        ("code,modality,code\nX,CT,X\n", "file.row[1]", "named twice"),
        ("code,modality\nA1,CT\n,DX\n", "file.row[3].code", ""),
        ("code,modality\nA1,CT\n" + "L" * 17 + ",DX\n", "file.row[3].code", "16"),
        (
            "code,modality,stationAeTitle\nA1,CT,DX01-TOO-LONG-AET\n",
            "file.row[2].stationAeTitle",
            "",
        ),
        ("code,modality,stationAeTitle\nA1,CT,DX\\01\n", "file.row[2].stationAeTitle", "backslash"),
        ('code,modality,stationName\nA1,CT,"two\nlines"\n', "file.row[2].stationName", "control"),
        ("code,modality\nA1,CT\nA2,XX\n", "file.row[3].modality", ""),
        ("code,modality,priority\nA1,CT,HIGH\n", "file.row[2].priority", ""),
        ("code,modality,expectedMinutes\nA1,CT,soon\n", "file.row[2].expectedMinutes", ""),
        ("code,modality\nA1,CT\nA2,CT\nA1,MR\n", "file.row[4].code", "also on row 2"),
        ("code,modality\nA1,CT,extra\n", "file.row[2]", "3 cells"),
        ('code,modality\nA1,"CT\n', "file.row[2]", "not valid CSV"),
        ("", "file", "empty"),
        ("\n\n", "file", "empty"),
        ("code,modality\n", "file", "no row"),
        ("code,modality,description\nA1,CT,caf\xe9\n".encode("latin-1"), "file.row[2]", "UTF-8"),
        ("code,modality\n".encode("utf-16"), "file.row[1]", "UTF-8"),
        (JUST_OVER, "file", "larger than"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
)
def test_a_bad_file_is_refused_naming_row_and_column_and_imports_nothing(
    client: TestClient, admin_headers: Headers, data: str | bytes, location: str, words: str
) -> None:
    # A good row first: it must not be imported either.
    assert upload(client, admin_headers, "code,modality\nKEEP,CT\n").status_code == 200
    answer = upload(client, admin_headers, data)
    assert answer.status_code == 422, answer.text
    details = answer.json()["error"]["details"]
    assert details[0]["location"] == location, details
    assert words in details[0]["message"], details
    assert set(catalog(client, admin_headers)) == {"KEEP"}


def test_a_huge_upload_is_refused_before_it_is_read(
    client: TestClient, admin_headers: Headers
) -> None:
    huge = ("code,modality\n" + "C1,CT\n" * (MAX_BYTES // 6 + 1)) * 4
    answer = upload(client, admin_headers, huge)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    chunked = client.post(
        "/api/procedures/import",
        content=iter([b"--x\r\n", b"code,modality\r\n"]),
        headers={**admin_headers, "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert chunked.status_code == 411, chunked.text
    assert catalog(client, admin_headers) == {}


def test_every_problem_of_a_file_is_named_at_once(
    client: TestClient, admin_headers: Headers
) -> None:
    data = "code,modality,stationAeTitle\nA1,XX,DX01\nA2,CT,DX\\2\nA3,CT,DX03\n"
    answer = upload(client, admin_headers, data)
    locations = [detail["location"] for detail in answer.json()["error"]["details"]]
    assert locations == ["file.row[2].modality", "file.row[3].stationAeTitle"]
    assert catalog(client, admin_headers) == {}


def test_an_import_without_the_file_field_is_refused(
    client: TestClient, admin_headers: Headers
) -> None:
    answer = client.post(
        "/api/procedures/import",
        files={"other": ("c.csv", b"code,modality\nA,CT\n", "text/csv")},
        headers=admin_headers,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["location"] == "file"
    answer = client.post(
        "/api/procedures/import", data={"file": "code,modality\nA,CT\n"}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert catalog(client, admin_headers) == {}
