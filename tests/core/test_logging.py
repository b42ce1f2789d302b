"""Logs hold no patient data: tracebacks withhold the messages of exceptions raised outside this
project (a database driver quotes the failing row), and keep the project's own."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from hl7.errors import DataTypeError, ErrorLocation
from sidecar.core.logs import WITHHELD, PatientSafeFormatter

# Built, not written out: a traceback quotes the source lines of its frames (code, which never
# holds patient data), and these lines would otherwise hold the value looked for.
PATIENT_ID = "-".join(("DOE", "4711"))
PATIENT_NAME = "^".join(("JANE", "DOE"))


def formatted(record_of: logging.LogRecord) -> str:
    return PatientSafeFormatter("%(levelname)s %(message)s").format(record_of)


def record_with(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException as raised:
        return logging.LogRecord(
            "sidecar",
            logging.ERROR,
            __file__,
            1,
            "unhandled error",
            (),
            (type(raised), raised, raised.__traceback__),
        )


def test_a_database_error_keeps_its_frames_not_its_row() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE TABLE patient (id TEXT UNIQUE)"))
        connection.execute(sa.text("INSERT INTO patient VALUES (:id)"), {"id": PATIENT_ID})
        with pytest.raises(IntegrityError) as failure:
            connection.execute(sa.text("INSERT INTO patient VALUES (:id)"), {"id": PATIENT_ID})
    text = formatted(record_with(failure.value))
    assert PATIENT_ID not in text
    assert "sqlalchemy.exc.IntegrityError: " + WITHHELD in text
    assert "test_logging.py" in text  # the frames are there


def test_chained_causes_are_withheld_too_and_own_messages_kept() -> None:
    try:
        try:
            raise KeyError(PATIENT_NAME)
        except KeyError as inner:
            raise DataTypeError(
                "PID-7 birth date is not a date", ErrorLocation("PID", 1, 7)
            ) from inner
    except DataTypeError as outer:
        text = formatted(record_with(outer))
    assert PATIENT_NAME not in text
    assert "builtins.KeyError: " + WITHHELD in text
    assert "PID-7 birth date is not a date" in text
    assert "direct cause" in text


def test_a_traceback_formatted_elsewhere_first_is_not_reused() -> None:
    record = record_with(ValueError(PATIENT_ID))
    logging.Formatter().format(record)  # another handler's formatter caches the full text
    assert PATIENT_ID not in formatted(record)
