"""One client's event stream: what it missed since `Last-Event-ID` (or a reset when that is
older than the table keeps), then what the hub hands out, filtered by the client's scope, with a
keepalive comment while nothing happens. It ends when the client goes, or when its session
does (checked every minute and at the token's expiry: the browser reconnects and is asked again).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import User
from sidecar.core.models import utcnow
from sidecar.events.hub import CLOSE, RESET, EventHub, Subscription
from sidecar.events.models import LiveEvent
from sidecar.events.scope import ScopeFilter

RETRY_MILLISECONDS = 2000
KEEPALIVE_SECONDS = 15.0
#: How often the caller's account is checked again (disabled, password or role changed).
RECHECK_SECONDS = 60.0
_PAGE = 500

RETRY = f"retry: {RETRY_MILLISECONDS}\n\n"
KEEPALIVE = ": keepalive\n\n"
RESET_EVENT = "event: reset\ndata: {}\n\n"


def format_event(event: LiveEvent) -> str:
    data = json.dumps(event.message(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


@dataclass
class Caller:
    """Who reads the stream; `still_allowed` raises once their session no longer holds."""

    user: User
    expires_at: datetime
    still_allowed: Callable[[], User]
    clock: Callable[[], datetime] = utcnow


def missed_since(engine: Engine, last_id: int, upto: int) -> tuple[bool, int]:
    """(reset first?, the id to go on after). Reset when events after `last_id` are gone
    (pruned), or when `last_id` never existed here (a database restored to an earlier time)."""
    with Session(engine) as session:
        oldest, newest = session.exec(
            select(func.min(col(LiveEvent.id)), func.max(col(LiveEvent.id)))
        ).one()
    if last_id > max(upto, newest or 0):
        return True, upto
    if last_id >= upto:
        return False, last_id
    if oldest is None or oldest > last_id + 1:
        return True, upto
    return False, last_id


def _page(engine: Engine, after: int, upto: int) -> list[LiveEvent]:
    with Session(engine) as session:
        rows = session.exec(
            select(LiveEvent)
            .where(col(LiveEvent.id) > after, col(LiveEvent.id) <= upto)
            .order_by(col(LiveEvent.id))
            .limit(_PAGE)
        ).all()
        session.expunge_all()
        return list(rows)


class EventStream:
    def __init__(
        self,
        hub: EventHub,
        caller: Caller,
        last_id: int | None,
        is_disconnected: Callable[[], Awaitable[bool]],
    ) -> None:
        self.hub = hub
        self.caller = caller
        self.last_id = last_id
        self._is_disconnected = is_disconnected
        self._filter = ScopeFilter(CareScope(caller.user, caller.clock()))

    def _visible(self, events: Sequence[LiveEvent]) -> list[LiveEvent]:
        self._filter.scope = CareScope(self._filter.scope.user, self.caller.clock())
        with Session(self.hub.engine) as session:
            return self._filter.visible(session, events)

    async def _render(self, events: Sequence[LiveEvent], sent: int) -> tuple[str, int]:
        fresh = [event for event in events if (event.id or 0) > sent]
        if not fresh:
            return "", sent
        visible = await asyncio.to_thread(self._visible, fresh)
        return "".join(format_event(event) for event in visible), fresh[-1].id or sent

    async def events(self) -> AsyncIterator[str]:
        subscription = await self.hub.subscribe()
        try:
            yield RETRY
            sent = subscription.joined_at
            if self.last_id is not None:
                reset, sent = await asyncio.to_thread(
                    missed_since, self.hub.engine, self.last_id, subscription.joined_at
                )
                if reset:
                    yield RESET_EVENT
                while sent < subscription.joined_at:
                    page = await asyncio.to_thread(
                        _page, self.hub.engine, sent, subscription.joined_at
                    )
                    if not page:
                        break
                    text, sent = await self._render(page, sent)
                    if text:
                        yield text
                sent = max(sent, subscription.joined_at)
            async for chunk in self._live(subscription, sent):
                yield chunk
        finally:
            self.hub.unsubscribe(subscription)

    async def _live(self, subscription: Subscription, sent: int) -> AsyncIterator[str]:
        last_output = time.monotonic()
        next_check = time.monotonic() + RECHECK_SECONDS
        while True:
            wait = max(0.05, min(5.0, last_output + KEEPALIVE_SECONDS - time.monotonic()))
            try:
                item = await asyncio.wait_for(subscription.queue.get(), timeout=wait)
            except TimeoutError:
                item = None
            if item == CLOSE or await self._is_disconnected():
                return
            if self.caller.clock() >= self.caller.expires_at:
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RECHECK_SECONDS
                try:
                    user = await asyncio.to_thread(self.caller.still_allowed)
                except Exception:  # the session no longer holds: the browser asks again
                    return
                self._filter = ScopeFilter(CareScope(user, self.caller.clock()))
            text = ""
            if item == RESET:
                text = RESET_EVENT
            elif isinstance(item, list):
                text, sent = await self._render(item, sent)
            if not text and time.monotonic() - last_output >= KEEPALIVE_SECONDS:
                text = KEEPALIVE
            if text:
                last_output = time.monotonic()
                yield text
