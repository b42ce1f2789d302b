"""Every page in headless Chromium, through the nginx front (and the busiest through the
sidecar's own too, below), with axe-core and the keyboard alone:
no serious or critical axe-core violation (WCAG 2.1 A and AA, and axe's best practices), every
visible control reached with Tab and showing where the focus is, readable on a tablet without
scrolling sideways, and all of it under the fronts' Content-Security-Policy with no script error
(tests/support/app_browser.py's run_sections fails the page on either). The pages of one role on
one front are visited in one browser session (Tours), each page still a test of its own.

Issue 18's pages add themselves to PAGES. What is checked here does not depend on the
database (an empty page is as accessible on SQLite as on PostgreSQL): the SQLite run has it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import pytest

from app_browser import AppFront, PageUser, make_page_users, ready_stat_study, start_app_front
from stack import Stack

pytestmark = [pytest.mark.orthanc, pytest.mark.one_database]

TABLET = {"width": 768, "height": 1024}


class Page(NamedTuple):
    #: Who opens it: a role of `users`, or None for a browser without a session.
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
# the most to break under them: the login form, the live worklist and the report editor.
SIDECAR_FRONT_PAGES = frozenset({"/login", "/app/worklist", "/app/studies/{study}"})
CASES = [("nginx", page) for page in PAGES] + [
    ("sidecar", page) for page in PAGES if page.path in SIDECAR_FRONT_PAGES
]
DEFAULT_VIEWPORT = {"width": 1280, "height": 900}  # app_session.mjs's own


# One stack for the module: what is checked here only reads it (the wrong password below counts
# once per front towards a lockout at five), and a stack per test cost more than the checks.
@pytest.fixture(scope="module")
def page_stack(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str
) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"), module_database_url)
    running.start_orthanc()
    running.start_sidecar()
    yield running
    running.close()


@pytest.fixture(scope="module")
def fronts(
    page_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, AppFront]]:
    with ExitStack() as running:
        yield {
            kind: running.enter_context(
                contextmanager(start_app_front)(kind, page_stack, tmp_path_factory.mktemp(kind))
            )
            for kind in ("nginx", "sidecar")
        }


@pytest.fixture(scope="module")
def users(page_stack: Stack) -> dict[str, PageUser]:
    return make_page_users(page_stack)


def page_steps(page: Page, study: int | None) -> list[dict[str, Any]]:
    """What every page gets: axe-core, every control with the keyboard, the page's own fields
    in order, and a tablet's width without scrolling sideways."""
    path = page.path.format(study=study) if page.study else page.path
    return [
        {"viewport": DEFAULT_VIEWPORT},  # the page before ended on a tablet's
        {"goto": {"path": path, "status": 200}},
        {"axe": {"name": page.path}},
        {"keyboardAll": True},
        *({"keyboard": {"name": name, "fromTop": i == 0}} for i, name in enumerate(page.reach)),
        {"viewport": TABLET},
        {"noHorizontalScroll": True},
        {"axe": {"name": f"{page.path} on a tablet"}},
    ]


class Tours:
    """The pages of one role on one front, visited in one browser session (one Chromium launch
    and one login: most of a page's cost when each had its own), run when a test first asks for
    one of them; each page's outcome is its own (run_sections)."""

    def __init__(self, fronts: dict[str, AppFront], users: dict[str, PageUser]) -> None:
        self.fronts = fronts
        self.users = users
        self.study: int | None = None
        self.outcomes: dict[tuple[str, Page], dict[str, Any]] = {}

    def outcome(self, front: str, page: Page) -> dict[str, Any]:
        if (front, page) not in self.outcomes:
            self._tour(front, page.role)
        return self.outcomes[front, page]

    def _tour(self, front: str, role: str | None) -> None:
        pages = [page for kind, page in CASES if kind == front and page.role == role]
        if self.study is None and any(page.study for page in pages):
            self.study = ready_stat_study(self.fronts[front].stack)
        before = [] if role is None else [self.users[role].login_step()]
        outcomes = self.fronts[front].run_sections(
            before,
            {page.path: page_steps(page, self.study) for page in pages},
            timeout=60.0 + 60.0 * len(pages),
        )
        for page in pages:
            self.outcomes[front, page] = outcomes[page.path]


@pytest.fixture(scope="module")
def tours(fronts: dict[str, AppFront], users: dict[str, PageUser]) -> Tours:
    return Tours(fronts, users)


@pytest.mark.parametrize(
    ("front", "page"),
    CASES,
    ids=[f"{kind}-{page.role or 'anonymous'}{page.path}" for kind, page in CASES],
)
def test_each_page_passes_axe_and_works_with_the_keyboard_alone(
    tours: Tours, front: str, page: Page
) -> None:
    outcome = tours.outcome(front, page)

    assert outcome["problem"] is None, f"{front} {page.path}:\n{outcome['problem']}"
    # This says the scans did run, on a page with controls.
    assert outcome["axe"] == {page.path: [], f"{page.path} on a tablet": []}
    [every_control] = [step for step in outcome["steps"] if step["name"] == "keyboardAll"]
    assert every_control["controls"] > 0
    reached = [step for step in outcome["steps"] if step["name"].startswith("keyboard ")]
    assert [step["focusVisible"] for step in reached] == [True] * len(page.reach)


@pytest.fixture(params=["sidecar", "nginx"])
def app_front(request: pytest.FixtureRequest, fronts: dict[str, AppFront]) -> AppFront:
    """The module's stack through each front in turn."""
    return fronts[request.param]


def test_the_login_page_with_a_refusal_stays_accessible(
    app_front: AppFront, users: dict[str, PageUser]
) -> None:
    """The refusal is read out (role=alert) and the form stays usable, after a wrong password
    and at a page asked for without a session (answered 401 with the form)."""
    radiologist = users["radiologist"]
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
    app_front: AppFront, users: dict[str, PageUser]
) -> None:
    """The fixture's users, one after the other in one browser, each returned where it asked."""
    steps: list[dict[str, Any]] = []
    for user in users.values():
        steps += [
            {"goto": "/login?next=/health"},
            user.login_step(),
            {"expectUrl": r"/health$"},
        ]
    report = app_front.run(steps)
    logins = [step for step in report["steps"] if step["name"].startswith("login ")]
    assert [(step["name"], step["path"]) for step in logins] == [
        (f"login {user.username}", "/health") for user in users.values()
    ]
    assert sorted(user.role for user in users.values()) == [
        "admin",
        "physician",
        "radiologist",
        "technologist",
    ]
