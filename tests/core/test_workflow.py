"""The status workflows, as data: what may follow what, and the message when it may not."""

from __future__ import annotations

from enum import StrEnum

import pytest

from sidecar.core.workflow import InvalidTransition, Workflow
from sidecar.reports.models import REPORT_WORKFLOW, ReportStatus
from sidecar.studies.models import STUDY_WORKFLOW, StudyStatus

S = StudyStatus

# Seed 001: SCHEDULED -> ARRIVED -> IN_PROGRESS -> COMPLETED -> PRELIMINARY -> FINAL, or
# CANCELLED; acquisition steps may be skipped forward; a discarded preliminary report returns the
# study to COMPLETED (read again), a final one never goes back.
EXPECTED = {
    S.SCHEDULED: {S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.CANCELLED},
    S.ARRIVED: {S.IN_PROGRESS, S.COMPLETED, S.CANCELLED},
    S.IN_PROGRESS: {S.COMPLETED, S.CANCELLED},
    S.COMPLETED: {S.PRELIMINARY, S.FINAL, S.CANCELLED},
    S.PRELIMINARY: {S.FINAL, S.COMPLETED},
    S.FINAL: set(),
    S.CANCELLED: set(),
}


class Light(StrEnum):
    RED = "RED"
    GREEN = "GREEN"
    AMBER = "AMBER"


def test_study_workflow_allows_exactly_the_seed_flow() -> None:
    assert {status: set(STUDY_WORKFLOW.allowed_from(status)) for status in S} == EXPECTED


@pytest.mark.parametrize("current", list(S), ids=[s.value for s in S])
def test_can_and_check_agree_with_allowed_from(current: StudyStatus) -> None:
    for target in S:
        allowed = target in EXPECTED[current]
        assert STUDY_WORKFLOW.can(current, target) is allowed
        if allowed:
            STUDY_WORKFLOW.check(current, target)
        else:
            with pytest.raises(InvalidTransition):
                STUDY_WORKFLOW.check(current, target)


def test_no_status_leads_to_itself_or_back_to_scheduled() -> None:
    for status in S:
        assert not STUDY_WORKFLOW.can(status, status)
        assert not STUDY_WORKFLOW.can(status, S.SCHEDULED)


def test_every_non_final_status_can_reach_final_or_cancelled() -> None:
    def reachable(start: StudyStatus) -> set[StudyStatus]:
        seen, todo = set(), [start]
        while todo:
            for nxt in STUDY_WORKFLOW.allowed_from(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for status in S:
        if STUDY_WORKFLOW.allowed_from(status):
            assert S.FINAL in reachable(status) or S.CANCELLED in reachable(status)
    assert S.FINAL in reachable(S.SCHEDULED)


def test_invalid_transition_message_names_both_statuses_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidTransition) as raised:
        STUDY_WORKFLOW.check(S.IN_PROGRESS, S.PRELIMINARY)

    assert str(raised.value) == (
        "study status cannot change from IN_PROGRESS to PRELIMINARY; "
        "allowed from IN_PROGRESS: CANCELLED, COMPLETED"
    )
    assert (raised.value.current, raised.value.target) == (S.IN_PROGRESS, S.PRELIMINARY)


def test_invalid_transition_lists_allowed_statuses_sorted() -> None:
    with pytest.raises(InvalidTransition) as raised:
        STUDY_WORKFLOW.check(S.ARRIVED, S.FINAL)

    assert str(raised.value).endswith("allowed from ARRIVED: CANCELLED, COMPLETED, IN_PROGRESS")


def test_invalid_transition_from_a_final_state_says_so() -> None:
    with pytest.raises(InvalidTransition) as raised:
        STUDY_WORKFLOW.check(S.FINAL, S.PRELIMINARY)

    assert "from FINAL to PRELIMINARY" in str(raised.value)
    assert str(raised.value).endswith("none (final state)")


def test_a_workflow_is_generic_over_its_status_enum() -> None:
    lights = Workflow("light", "light", {Light.RED: {Light.GREEN}, Light.GREEN: [Light.AMBER]})

    assert lights.allowed_from(Light.GREEN) == frozenset({Light.AMBER})
    assert lights.allowed_from(Light.AMBER) == frozenset()  # not listed: a final state
    assert lights.can(Light.RED, Light.GREEN)
    assert not lights.can(Light.RED, Light.AMBER)
    with pytest.raises(InvalidTransition, match=r"^light status cannot change from RED to AMBER"):
        lights.check(Light.RED, Light.AMBER)


def test_allowed_from_cannot_be_used_to_change_the_workflow() -> None:
    allowed = STUDY_WORKFLOW.allowed_from(S.FINAL)
    assert isinstance(allowed, frozenset)
    with pytest.raises(AttributeError):
        allowed.add(S.SCHEDULED)  # type: ignore[attr-defined]


def test_report_workflow_signs_once_then_only_amends_or_corrects() -> None:
    r = ReportStatus
    assert {status: set(REPORT_WORKFLOW.allowed_from(status)) for status in r} == {
        r.PRELIMINARY: {r.FINAL},
        r.FINAL: {r.AMENDED, r.CORRECTED},
        r.AMENDED: {r.AMENDED, r.CORRECTED},
        r.CORRECTED: {r.AMENDED, r.CORRECTED},
    }
    with pytest.raises(InvalidTransition, match="from FINAL to PRELIMINARY"):
        REPORT_WORKFLOW.check(r.FINAL, r.PRELIMINARY)
