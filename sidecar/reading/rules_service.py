"""Assignment rules managed by administrators: one function for each change, called by the API
(sidecar.reading.rules_router) and the admin page (sidecar.web) alike; each checks the pool,
audits and commits. (How rules assign a study: sidecar.reading.rules.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.errors import InvalidRequest, UnknownRecord
from sidecar.reading.models import AssignmentRule, RuleCreate, RuleUpdate


def list_rules(session: Session) -> list[AssignmentRule]:
    """Every rule, in the order they are tried."""
    return list(
        session.exec(
            select(AssignmentRule).order_by(col(AssignmentRule.position), col(AssignmentRule.id))
        ).all()
    )


def get_rule(session: Session, rule_id: int) -> AssignmentRule:
    rule = session.get(AssignmentRule, rule_id)
    if rule is None:
        raise UnknownRecord(f"assignment rule {rule_id} not found")
    return rule


def create_rule(
    session: Session, body: RuleCreate, *, admin: User, now: datetime
) -> AssignmentRule:
    values = body.model_dump(exclude_unset=True)
    values["pool"] = _pool(session, body.pool)
    rule = AssignmentRule(**values, created_at=now, updated_at=now)
    session.add(rule)
    session.flush()
    _audit(session, admin, "assignment_rule.created", rule, sorted(values))
    return _commit(session, rule)


def update_rule(
    session: Session, rule: AssignmentRule, body: RuleUpdate, *, admin: User, now: datetime
) -> AssignmentRule:
    values = body.model_dump(exclude_unset=True)
    if "pool" in values:
        values["pool"] = _pool(session, values["pool"])
    for name, value in values.items():
        setattr(rule, name, value)
    rule.updated_at = now
    session.add(rule)
    _audit(session, admin, "assignment_rule.updated", rule, sorted(values))
    return _commit(session, rule)


def delete_rule(session: Session, rule: AssignmentRule, *, admin: User) -> None:
    _audit(session, admin, "assignment_rule.deleted", rule, [])
    session.delete(rule)
    session.commit()


def _pool(session: Session, pool: list[int]) -> list[int]:
    """The pool's members, each once, in the order given: radiologists' accounts only."""
    members = list(dict.fromkeys(pool))
    found = {user.id: user for user in session.exec(select(User).where(col(User.id).in_(members)))}
    unknown = [m for m in members if m not in found]
    if unknown:
        raise InvalidRequest(f"pool: no user with id {', '.join(map(str, unknown))}")
    others = [m for m in members if found[m].role != Role.RADIOLOGIST]
    if others:
        raise InvalidRequest(f"pool: users {', '.join(map(str, others))} are not radiologists")
    return members


def _audit(session: Session, admin: User, action: str, rule: AssignmentRule, fields: Any) -> None:
    audit.record(
        session,
        actor=admin.username,
        action=action,
        entity_type="assignment_rule",
        entity_id=rule.id,
        fields=fields,
        pool=rule.pool,
    )


def _commit(session: Session, rule: AssignmentRule) -> AssignmentRule:
    session.commit()
    session.refresh(rule)
    return rule
