"""What routes are given, and the one module that reads app.state.

The app factory builds every service once and registers it in `Services`, by its type; a route
asks for one with a typed dependency, `Annotated[OrderEvents, Depends(provide(OrderEvents))]`,
and never reaches into `request.app.state` itself. The settings, a database session per request,
the clock and the caller's bearer credential are provided here for every domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.core.settings import Settings

T = TypeVar("T")


class Clock:
    """The time the service reads (tests give the app a clock they move by hand)."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self._now = now

    def __call__(self) -> datetime:
        return self._now()


class Services:
    """The objects the app factory built, one per type."""

    def __init__(self) -> None:
        self._items: dict[type, object] = {}

    def add(self, item: T, kind: type[T] | None = None) -> T:
        self._items[kind or type(item)] = item
        return item

    def get(self, kind: type[T]) -> T:
        try:
            return cast(T, self._items[kind])
        except KeyError:
            raise LookupError(f"no {kind.__name__} was built for this app") from None

    def find(self, kind: type[T]) -> T | None:
        """The service, or None when this app runs without it (a feature turned off)."""
        return cast(T | None, self._items.get(kind))


def attach(app: FastAPI, services: Services) -> None:
    app.state.services = services


def services_of(app: Any) -> Services:
    found: Services = app.state.services
    return found


@cache
def provide(kind: type[T]) -> Callable[[Request], T]:
    """The dependency that gives a route the service of that type."""

    def provider(request: Request) -> T:
        return services_of(request.app).get(kind)

    provider.__name__ = f"provide_{kind.__name__}"
    return provider


@cache
def provide_optional(kind: type[T]) -> Callable[[Request], T | None]:
    """As provide, None when the feature is off (no HIS configured, no worklist...)."""

    def provider(request: Request) -> T | None:
        return services_of(request.app).find(kind)

    provider.__name__ = f"provide_optional_{kind.__name__}"
    return provider


def get_session(request: Request) -> Iterator[Session]:
    with Session(services_of(request.app).get(Engine)) as session:
        yield session


_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/auth/login")

SettingsDep = Annotated[Settings, Depends(provide(Settings))]
SessionDep = Annotated[Session, Depends(get_session)]
EngineDep = Annotated[Engine, Depends(provide(Engine))]
ClockDep = Annotated[Clock, Depends(provide(Clock))]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
