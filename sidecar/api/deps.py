"""Request-scoped dependencies: the database session, the settings, the authenticated user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, SQLModel, func, select

from sidecar.errors import Forbidden, Unauthorized
from sidecar.models.common import MAX_RECORD_ID
from sidecar.models.users import Role, User
from sidecar.security import InvalidToken, decode_access_token
from sidecar.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/auth/login")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def current_user(session: SessionDep, settings: SettingsDep, credentials: BearerDep) -> User:
    if credentials is None:
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    try:
        claims = decode_access_token(credentials.credentials, settings.jwt_secret)
    except InvalidToken as exc:
        raise Unauthorized("the access token is invalid or expired") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("the account is disabled or no longer exists")
    if user.credentials_changed_at is not None and claims.issued_at < user.credentials_changed_at:
        raise Unauthorized("the password or role changed since this token was issued: log in again")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: Role) -> Callable[..., User]:
    allowed = frozenset(roles)

    def check(user: CurrentUser) -> User:
        if user.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(f"this action needs one of the roles: {names}")
        return user

    return check


_R = Role
Clinician = Annotated[
    User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST, _R.PHYSICIAN))
]
StudyEditor = Annotated[User, Depends(require_roles(_R.ADMIN, _R.RADIOLOGIST, _R.TECHNOLOGIST))]
Scheduler = Annotated[User, Depends(require_roles(_R.ADMIN, _R.TECHNOLOGIST))]
Admin = Annotated[User, Depends(require_roles(_R.ADMIN))]


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
