"""What the report editor's htmx "Sign" meets when the session has ended meanwhile: the answer
must not reload the page (HX-Refresh), which would discard the report text typed in the editor,
and the page says nothing was saved; a fragment refreshed by GET may reload onto the login
form."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from sidecar.accounts.models import Role


@pytest.mark.one_database
def test_a_fragment_refresh_without_session_reloads_the_page(
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    client.cookies.clear()  # the session ended (expired, logged out elsewhere)

    refused = client.get("/app/worklist/rows", headers={"HX-Request": "true"})

    assert refused.status_code == 401
    assert refused.headers.get("HX-Refresh") == "true"


@pytest.mark.one_database
def test_signing_after_the_session_ended_keeps_the_typed_report(
    logged_in: Callable[[Role], TestClient],
) -> None:
    client = logged_in(Role.RADIOLOGIST)
    client.cookies.clear()

    refused = client.post(
        "/app/studies/1/report",
        data={"action": "sign", "findings": "Typed for an hour.", "impression": "Normal."},
        headers={"HX-Request": "true"},
    )

    assert refused.status_code == 401
    assert "HX-Refresh" not in refused.headers
    # What says so instead: the page's script fills this region on an htmx error status.
    page = logged_in(Role.RADIOLOGIST).get("/app/")
    # aria-live="assertive" (announced at once, as role=alert) rather than role="alert": the
    # pages' own refusals are the alerts a page is rendered with.
    region = '<div id="request-alert" class="alert alert--error" aria-live="assertive" hidden>'
    assert region in page.text
    assert 'role="alert"' not in page.text
    script = client.get("/app/static/app.js").text
    assert "htmx:responseError" in script and "nothing was saved" in script
