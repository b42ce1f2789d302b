"""Assignment rules (issue 14, item 3): administrators only, every change audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlmodel import Session, col, select

from sidecar.accounts.dependencies import Admin
from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.errors import InvalidRequest, UnknownRecord
from sidecar.core.pagination import RecordId
from sidecar.reading.models import AssignmentRule, RuleCreate, RulePublic, RuleUpdate

router = APIRouter(prefix="/api/assignment-rules", tags=["reading"])


@router.get("", response_model=list[RulePublic])
def list_rules(session: SessionDep, _: Admin) -> list[AssignmentRule]:
    """Every rule, in the order they are tried."""
    return list(
        session.exec(
            select(AssignmentRule).order_by(col(AssignmentRule.position), col(AssignmentRule.id))
        ).all()
    )


@router.post("", response_model=RulePublic, status_code=status.HTTP_201_CREATED)
def create_rule(
    body: RuleCreate, session: SessionDep, admin: Admin, clock: ClockDep
) -> AssignmentRule:
    values = body.model_dump(exclude_unset=True)
    values["pool"] = _pool(session, body.pool)
    now = clock()
    rule = AssignmentRule(**values, created_at=now, updated_at=now)
    session.add(rule)
    session.flush()
    _audit(session, admin, "assignment_rule.created", rule, sorted(values))
    return _commit(session, rule)


@router.patch("/{rule_id}", response_model=RulePublic)
def update_rule(
    rule_id: RecordId, body: RuleUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> AssignmentRule:
    rule = _get(session, rule_id)
    values = body.model_dump(exclude_unset=True)
    if "pool" in values:
        values["pool"] = _pool(session, values["pool"])
    for name, value in values.items():
        setattr(rule, name, value)
    rule.updated_at = clock()
    session.add(rule)
    _audit(session, admin, "assignment_rule.updated", rule, sorted(values))
    return _commit(session, rule)


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(rule_id: RecordId, session: SessionDep, admin: Admin) -> None:
    rule = _get(session, rule_id)
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


def _get(session: Session, rule_id: int) -> AssignmentRule:
    rule = session.get(AssignmentRule, rule_id)
    if rule is None:
        raise UnknownRecord(f"assignment rule {rule_id} not found")
    return rule


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
