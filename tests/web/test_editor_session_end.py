"""A radiologist's session ends while the report editor is open (here: an administrator disables
the account meanwhile). Pressing "Sign" must not reload the page onto the login form, which would
throw away the report typed in it: the page stays, says that nothing was saved, and nothing is.
In headless Chromium on a real stack; what is checked does not depend on the database."""

from __future__ import annotations

from typing import Any

import pytest

from app_browser import PAGE_USER_PASSWORD, AppFront, ready_stat_study

pytestmark = [pytest.mark.orthanc, pytest.mark.one_database]

TYPED = "Typed for an hour: no acute intracranial abnormality."


def test_signing_after_the_session_ended_keeps_the_page_and_says_nothing_was_saved(
    sidecar_front: AppFront,
) -> None:
    stack = sidecar_front.stack
    study_id = ready_stat_study(stack)
    made = stack.api(
        "POST",
        "/api/users",
        json={"username": "editor.session", "password": PAGE_USER_PASSWORD, "role": "radiologist"},
    )
    assert made.status_code == 201, made.text
    user_id = made.json()["id"]

    def end_session() -> None:
        disabled = stack.api("POST", f"/api/users/{user_id}/disable")
        assert disabled.status_code == 200, disabled.text

    report: dict[str, Any] = sidecar_front.run(
        [
            {"login": {"username": "editor.session", "password": PAGE_USER_PASSWORD}},
            {"goto": {"path": f"/app/studies/{study_id}", "status": 200}},
            {"fill": {"label": "Findings", "value": TYPED}},
            {"fill": {"label": "Impression", "value": "Normal."}},
            {"pause": "end-session"},
            {"click": {"role": "button", "name": "Sign"}},
            # waitForText fails when the page navigated or reloaded meanwhile.
            {"waitForText": "Your session has ended, so nothing was saved.", "timeoutMs": 10000},
            {"expectUrl": f"/app/studies/{study_id}$"},
        ],
        hooks={"end-session": end_session},
        # The refused POST itself is reported by the browser as a failed resource (401).
        allow_console_errors=(r"401",),
    )

    assert report["ok"], report
    reports = stack.api("GET", f"/api/reports/study/{study_id}")
    assert reports.status_code == 200, reports.text
    assert reports.json()["items"] == [], "nothing may be saved for a disabled account"
