"""Accounts the service makes by itself: the first administrator."""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlmodel import Session, func, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.core import audit
from sidecar.core.settings import Settings

log = logging.getLogger(__name__)


def bootstrap_admin(engine: Engine, settings: Settings) -> None:
    """On first start with an empty user table, creates `admin` from ADMIN_PASSWORD if set."""
    if not settings.admin_password:
        return
    with Session(engine) as session:
        if session.exec(select(func.count()).select_from(User)).one() > 0:
            return
        admin = User(
            username="admin", password_hash=hash_password(settings.admin_password), role=Role.ADMIN
        )
        session.add(admin)
        session.flush()
        audit.record(
            session,
            actor="system:bootstrap",
            action="user.created",
            entity_type="user",
            entity_id=admin.id,
            role=Role.ADMIN,
        )
        session.commit()
        log.info("created the initial administrator account 'admin'")
