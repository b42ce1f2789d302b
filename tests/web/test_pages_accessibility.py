"""Every page in headless Chromium, through the nginx front (and the busiest through the
sidecar's own too, below), with axe-core and the keyboard alone:
no serious or critical axe-core violation (WCAG 2.1 A and AA, and axe's best practices), every
visible control reached with Tab and showing where the focus is, readable on a tablet without
scrolling sideways, and all of it under the fronts' Content-Security-Policy with no script error
(tests/support/app_browser.py fails the run on either).

Issue 18's pages add themselves to PAGES. What is checked here does not depend on the
database (an empty page is as accessible on SQLite as on PostgreSQL): the SQLite run has it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from app_browser import AppFront, PageUser, ready_stat_study, start_app_front
from stack import Stack

pytestmark = [pytest.mark.orthanc, pytest.mark.one_database]

TABLET = {"width": 768, "height": 1024}


class Page(NamedTuple):
    #: Who opens it: a role of `page_users`, or None for a browser without a session.
    role: str | None
    path: str
    #: Accessible names the keyboard must reach from the top, in this order.
    reach: tuple[str, ...] = ()
    #: The page shows a study (a STAT order's, ready to read): `{study}` in `path` is its id.
    study: bool = False


PAGES = [
    Page(None, "/login", ("User name", "Password", "Log in")),
    # Issue 18's pages, e.g. Page("radiologist", "/app/worklist"),
    Page(
        "radiologist",
        "/app/worklist",
        ("Show", "Modality", "Priority", "Overdue only", "Apply filters"),
        study=True,
    ),
    Page(
        "radiologist",
        "/app/studies/{study}",
        (
            "Technique",
            "Comparison",
            "Findings",
            "Impression",
            "Recommendations",
            "Save draft",
            "Sign",
        ),
        study=True,
    ),
    Page("technologist", "/app/orders"),
    Page("physician", "/app/results"),
    Page("radiologist", "/app/analytics", ("Period", "Show")),
    Page("admin", "/app/analytics"),
    Page("admin", "/app/admin"),
    Page("admin", "/app/admin/users", ("User name", "Password", "Role")),
    Page("admin", "/app/admin/procedures", ("Catalog file (CSV)", "Import")),
    Page("admin", "/app/admin/rules", ("Name", "Position")),
    Page("admin", "/app/admin/templates", ("Name", "Modality (optional, e.g. CT)")),
]


# Every page through nginx, the production front. Through the sidecar's own front (`make run`
# without nginx: the same HTML under its own copy of the same security headers) the pages with
# the most to break under them: the login form, the live worklist and the report editor. Each
# row costs a browser session of 10-15 s, and every page on both fronts doubled that.
SIDECAR_FRONT_PAGES = frozenset({"/login", "/app/worklist", "/app/studies/{study}"})
CASES = [("nginx", page) for page in PAGES] + [
    ("sidecar", page) for page in PAGES if page.path in SIDECAR_FRONT_PAGES
]


@pytest.fixture
def page_front(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[AppFront]:
    yield from start_app_front(request.param, stack, tmp_path)


@pytest.mark.parametrize(
    ("page_front", "page"),
    CASES,
    ids=[f"{kind}-{page.role or 'anonymous'}{page.path}" for kind, page in CASES],
    indirect=["page_front"],
)
def test_each_page_passes_axe_and_works_with_the_keyboard_alone(
    page_front: AppFront, page_users: dict[str, PageUser], page: Page
) -> None:
    app_front = page_front
    steps: list[dict[str, Any]] = []
    if page.role is not None:
        steps.append(page_users[page.role].login_step())
    path = page.path.format(study=ready_stat_study(app_front.stack)) if page.study else page.path
    steps += [
        {"goto": {"path": path, "status": 200}},
        {"axe": {"name": page.path}},
        {"keyboardAll": True},
        *({"keyboard": {"name": name, "fromTop": i == 0}} for i, name in enumerate(page.reach)),
        {"viewport": TABLET},
        {"noHorizontalScroll": True},
        {"axe": {"name": f"{page.path} on a tablet"}},
    ]
    report = app_front.run(steps)

    # run() raised on any violation; this says the scans did run, on a page with controls.
    assert report["axe"] == {page.path: [], f"{page.path} on a tablet": []}
    [every_control] = [step for step in report["steps"] if step["name"] == "keyboardAll"]
    assert every_control["controls"] > 0
    reached = [step for step in report["steps"] if step["name"].startswith("keyboard ")]
    assert [step["focusVisible"] for step in reached] == [True] * len(page.reach)


def test_the_login_page_with_a_refusal_stays_accessible(
    app_front: AppFront, page_users: dict[str, PageUser]
) -> None:
    """The refusal is read out (role=alert) and the form stays usable, after a wrong password
    and at a page asked for without a session (answered 401 with the form)."""
    radiologist = page_users["radiologist"]
    report = app_front.run(
        [
            {"goto": {"path": "/viewer?StudyInstanceUIDs=1.2.3", "status": 401}},
            {"axe": {"name": "at a link"}},
            {"fill": {"label": "User name", "value": radiologist.username}},
            {"fill": {"label": "Password", "value": "not-the-password"}},
            {"keyboard": {"name": "Log in", "role": "button"}},
            {"press": "Enter"},
            {"expectText": "unknown user name or wrong password", "within": {"role": "alert"}},
            {"axe": {"name": "after a refusal"}},
            {"keyboardAll": True},
        ],
    )
    assert report["axe"] == {"at a link": [], "after a refusal": []}


def test_each_role_logs_in_through_the_form(
    app_front: AppFront, page_users: dict[str, PageUser]
) -> None:
    """The fixture's users, one after the other in one browser, each returned where it asked."""
    steps: list[dict[str, Any]] = []
    for user in page_users.values():
        steps += [
            {"goto": "/login?next=/health"},
            user.login_step(),
            {"expectUrl": r"/health$"},
        ]
    report = app_front.run(steps)
    logins = [step for step in report["steps"] if step["name"].startswith("login ")]
    assert [(step["name"], step["path"]) for step in logins] == [
        (f"login {user.username}", "/health") for user in page_users.values()
    ]
    assert sorted(user.role for user in page_users.values()) == [
        "admin",
        "physician",
        "radiologist",
        "technologist",
    ]
