"""Pieces every model shares: UTC timestamps that survive SQLite, and the API's camelCase."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime, String, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

#: The largest id a record can have: PostgreSQL's integer primary keys (SQLite's are wider).
MAX_RECORD_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


#: The times the sidecar accepts from outside (the API, HL7): from 1900 to the end of 9998 in
#: UTC. A day's margin on either side of what Python and DICOM can write means any time zone
#: can show the time (a worklist item is written in the department's local time), and no
#: conversion between zones can overflow.
EARLIEST_TIME = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)  # exclusive


def time_problem(value: datetime) -> str | None:
    """Why an aware `value` is not a time the sidecar can hold and write; None when it is."""
    try:
        in_utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        in_utc = None
    if in_utc is None or not EARLIEST_TIME <= in_utc < LATEST_TIME:
        return "is outside the supported range of times (years 1900 to 9998)"
    return None


def _supported(value: datetime) -> datetime:
    if (problem := time_problem(value)) is not None:
        raise ValueError(problem)
    return value


#: An aware date and time within the supported range: the type of every time the API is given.
SupportedTime = Annotated[AwareDatetime, AfterValidator(_supported)]


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC: SQLite has no time zones, PostgreSQL gets one."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


EnumT = TypeVar("EnumT", bound=StrEnum)


class EnumText(TypeDecorator[EnumT]):
    """A status or role stored as its text value: adding a state later needs no ALTER TYPE."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: type[EnumT], length: int) -> None:
        super().__init__(length)
        self._enum_type = enum_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self._enum_type(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> EnumT | None:
        return None if value is None else self._enum_type(value)


_UID_SUFFIX = re.compile(r"Uid$")


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Core table, for plain INSERTs where the ORM's work is not wanted."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def api_alias(field_name: str) -> str:
    """study_instance_uid -> studyInstanceUID, as DICOM and the seed documents spell it."""
    return _UID_SUFFIX.sub("UID", to_camel(field_name))


class ApiModel(BaseModel):
    """Request and response bodies: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=api_alias, populate_by_name=True, from_attributes=True, extra="forbid"
    )


class ApiInput(ApiModel):
    """A request body. No string may hold a NUL character (PostgreSQL cannot store one), and a
    field named in `not_nullable` may be left out but not sent as null: its column holds no
    null, so null can only mean a mistake."""

    not_nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.not_nullable:
            raise ValueError("cannot be null: leave the field out to keep its value")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


ItemT = TypeVar("ItemT")


class Page(ApiModel, Generic[ItemT]):
    items: list[ItemT]
    total: int
    offset: int
    limit: int


def split_multi(value: str | None) -> list[str]:
    return [part for part in (value or "").split(",") if part]


def join_multi(values: list[str] | tuple[str, ...]) -> str:
    return ",".join(v for v in values if v)


def to_plain(value: Any) -> Any:
    """JSON-safe rendering of an audit detail value."""
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value"):
        return value.value
    return value
