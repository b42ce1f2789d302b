"""Assignment rules (issue 14, item 3): administrators only, every change audited
(sidecar.reading.rules_service)."""

from __future__ import annotations

from fastapi import APIRouter, status

from sidecar.accounts.dependencies import Admin
from sidecar.core.dependencies import ClockDep, SessionDep
from sidecar.core.pagination import RecordId
from sidecar.reading import rules_service
from sidecar.reading.models import AssignmentRule, RuleCreate, RulePublic, RuleUpdate

router = APIRouter(prefix="/api/assignment-rules", tags=["reading"])


@router.get("", response_model=list[RulePublic])
def list_rules(session: SessionDep, _: Admin) -> list[AssignmentRule]:
    """Every rule, in the order they are tried."""
    return rules_service.list_rules(session)


@router.post("", response_model=RulePublic, status_code=status.HTTP_201_CREATED)
def create_rule(
    body: RuleCreate, session: SessionDep, admin: Admin, clock: ClockDep
) -> AssignmentRule:
    return rules_service.create_rule(session, body, admin=admin, now=clock())


@router.patch("/{rule_id}", response_model=RulePublic)
def update_rule(
    rule_id: RecordId, body: RuleUpdate, session: SessionDep, admin: Admin, clock: ClockDep
) -> AssignmentRule:
    rule = rules_service.get_rule(session, rule_id)
    return rules_service.update_rule(session, rule, body, admin=admin, now=clock())


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(rule_id: RecordId, session: SessionDep, admin: Admin) -> None:
    rules_service.delete_rule(session, rules_service.get_rule(session, rule_id), admin=admin)
