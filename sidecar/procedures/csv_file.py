"""A procedure catalog as a CSV file (`POST /api/procedures/import`): read and checked whole
before anything is imported, so that a bad file imports nothing and its refusal names every
row and column at fault (up to MAX_PROBLEMS).

The file: UTF-8 (with or without a byte order mark), comma-separated, quoted as RFC 4180; a
header row naming the columns by the API's field names (`code, codingSystem, description,
modality, bodyPart, stationAeTitle, stationName, protocolCode, expectedMinutes, priority`, in
any order; `code` and `modality` required); one row per code. Rows are numbered as a
spreadsheet shows them: the header is row 1. Cells are trimmed of surrounding spaces; an empty
cell is no value. Each row is checked by the model the JSON API checks bodies with
(sidecar.procedures.models.ProcedureCreate), so both refuse the same values.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sidecar.core.errors import UnacceptableValue
from sidecar.core.models import api_alias
from sidecar.procedures.models import ProcedureCreate, ProcedureFields

MAX_BYTES = 4 * 1024 * 1024  # a catalog of 20,000 codes with every column fits in 3 MB
MAX_ROWS = 20_000
MAX_PROBLEMS = 20
COLUMNS = {api_alias(name): name for name in ProcedureFields.model_fields}
REQUIRED = ("code", "modality")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CatalogFile:
    columns: list[str]  # the field names (snake_case) the header names
    rows: list[dict[str, Any]]  # each row's values, checked, by field name


class Problems:
    """The refusals found so far, each located as `file.row[N].column`."""

    def __init__(self) -> None:
        self.found: list[dict[str, str]] = []

    def add(self, message: str, row: int | None = None, column: str | None = None) -> None:
        location = "file" + (f".row[{row}]" if row is not None else "")
        location += f".{column}" if column else ""
        if len(self.found) < MAX_PROBLEMS:
            self.found.append({"location": location, "message": message})

    def refuse(self) -> None:
        if self.found:
            refusal = UnacceptableValue("file", "")
            refusal.message = "the file is not a procedure catalog this service can import"
            refusal.details = self.found
            raise refusal


def read_catalog(data: bytes) -> CatalogFile:
    """The checked rows of a catalog file; raises UnacceptableValue (422) naming each problem.
    Rows are numbered as the file's records (the header is row 1; blank lines count)."""
    problems = Problems()
    if len(data) > MAX_BYTES:
        problems.add(f"is larger than {MAX_BYTES} bytes")
        problems.refuse()
    text = _decoded(data, problems)
    records = _records(text, problems)
    if not records:
        problems.add("is empty: a header row and one row per procedure code are expected")
        problems.refuse()
    columns = _header(records[0][1], problems)
    problems.refuse()
    if len(records) - 1 > MAX_ROWS:
        problems.add(f"has more than {MAX_ROWS} rows")
        problems.refuse()
    if len(records) == 1:
        problems.add("has a header but no row")
        problems.refuse()
    rows: list[dict[str, Any]] = []
    first_row_of: dict[str, int] = {}
    for number, record in records[1:]:
        row = _row(number, record, columns, problems)
        if row is None:
            continue
        if (earlier := first_row_of.get(row["code"])) is not None:
            problems.add(f"code is also on row {earlier}: one row per code", number, "code")
            continue
        first_row_of[row["code"]] = number
        rows.append(row)
    problems.refuse()
    return CatalogFile(columns=columns, rows=rows)


def _decoded(data: bytes, problems: Problems) -> str:
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        problems.add("is not UTF-8 text (save the file as CSV UTF-8)", row)
        problems.refuse()
        raise AssertionError("unreachable") from exc


def _records(text: str, problems: Problems) -> list[tuple[int, list[str]]]:
    """The file's rows, blank lines left out; a row CSV cannot read is refused by its number."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str]] = []
    try:
        for record in reader:
            records.append(record)
            if len(records) > MAX_ROWS + 1:
                break
    except csv.Error as exc:
        problems.add(f"is not valid CSV: {exc}"[:200], len(records) + 1)
        problems.refuse()
    return [
        (number, record)
        for number, record in enumerate(records, start=1)
        if any(cell.strip() for cell in record)
    ]


def _header(record: list[str], problems: Problems) -> list[str]:
    names = [cell.strip() for cell in record]
    known = ", ".join(COLUMNS)
    seen: set[str] = set()
    for name in names:
        if name not in COLUMNS:
            problems.add(f"column {name!r} is not one of: {known}"[:300], 1)
        elif name in seen:
            problems.add(f"column {name} is named twice", 1)
        seen.add(name)
    for name in REQUIRED:
        if name not in seen:
            problems.add(f"the header has no {name} column (required)", 1)
    return [COLUMNS[name] for name in names if name in COLUMNS]


def _row(
    number: int, record: list[str], columns: list[str], problems: Problems
) -> dict[str, Any] | None:
    if len(record) > len(columns):
        problems.add(f"has {len(record)} cells, the header names {len(columns)} columns", number)
        return None
    cells = {name: cell.strip() for name, cell in zip(columns, record, strict=False)}
    values = {name: value for name, value in cells.items() if value != ""}
    try:
        checked = ProcedureCreate.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            problems.add(error["msg"], number, api_alias(field) if field else None)
        return None
    return {name: getattr(checked, name) for name in columns}
