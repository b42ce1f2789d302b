"""List answers: one page of rows with the total, and the limits of what a client may ask."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query
from sqlmodel import Session, SQLModel, func, select

from sidecar.core.models import MAX_RECORD_ID

#: A record's id in a path: outside the database's integer range nothing can match, and
#: PostgreSQL would refuse the comparison rather than find nothing.
RecordId = Annotated[int, Path(ge=1, le=MAX_RECORD_ID, description="the record's id")]
#: The largest offset a list accepts (SQLite refuses an OFFSET over 2^63 - 1).
MAX_OFFSET = MAX_RECORD_ID


def record_id_query(alias: str) -> Any:
    """A query parameter naming a record by id, in the same range as RecordId."""
    return Query(alias=alias, ge=1, le=MAX_RECORD_ID)


class Pagination:
    def __init__(
        self,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="rows to return")] = 50,
    ) -> None:
        self.offset = offset
        self.limit = limit


PaginationDep = Annotated[Pagination, Depends()]


def page(items: list[Any], total: int, pagination: Pagination) -> dict[str, Any]:
    return {"items": items, "total": total, "offset": pagination.offset, "limit": pagination.limit}


def paginate(
    session: Session,
    model: type[SQLModel],
    conditions: list[Any],
    order_by: list[Any],
    pagination: Pagination,
) -> dict[str, Any]:
    """One page of `model` rows matching every condition, with the total, as list answers give."""
    total = session.exec(select(func.count()).select_from(model).where(*conditions)).one()
    rows = session.exec(
        select(model)
        .where(*conditions)
        .order_by(*order_by)
        .offset(pagination.offset)
        .limit(pagination.limit)
    ).all()
    return page(list(rows), total, pagination)


def equal_to(*filters: tuple[Any, object]) -> list[Any]:
    """`column == value` for each filter the client gave (value not None)."""
    return [column == value for column, value in filters if value is not None]
