"""The department's pages in headless Chromium: tests/browser/app_session.mjs (the step
vocabulary is in its header) run from Python, and fixtures giving a real stack behind either
front with a user of each role.

    def test_x(app_front: AppFront, page_users: dict[str, PageUser]) -> None:
        result = app_front.run([page_users["radiologist"].login_step(), {"goto": "/app/"}])

A failed step, a Content-Security-Policy violation, an uncaught page error or a serious or
critical axe-core violation fails the run with one message saying which (and where the
screenshot of the failing page is); the parsed report is returned otherwise."""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nginx_front import start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack
from testapp import PHYSICIAN_PROVIDER_ID
from viewer_browser import BROWSER_DIR, BrowserUnavailable, require_browser

SCRIPT = BROWSER_DIR / "app_session.mjs"
ROLES = ("admin", "radiologist", "technologist", "physician")
#: The password of every page user but the stack's admin (STACK_ADMIN_PASSWORD).
PAGE_USER_PASSWORD = "page-user-password-1"


class SessionFailed(AssertionError):
    pass


@dataclass(frozen=True)
class PageUser:
    username: str
    password: str
    role: str

    def login_step(self) -> dict[str, Any]:
        """Logs in through the /login form (the one on the page, else /login's)."""
        return {"login": {"username": self.username, "password": self.password}}


@dataclass
class AppFront:
    """One front of a running stack: `kind` is "sidecar" (its own pages) or "nginx"
    (viewer/nginx.conf in front of it)."""

    kind: str
    url: str
    stack: Stack
    artifacts: Path

    def run(self, steps: Sequence[object], **options: Any) -> dict[str, Any]:
        options.setdefault("artifacts_dir", self.artifacts)
        return run_app_session(self.url, steps, **options)

    def run_sections(
        self, before: Sequence[object], sections: Mapping[str, Sequence[object]], **options: Any
    ) -> dict[str, dict[str, Any]]:
        options.setdefault("artifacts_dir", self.artifacts)
        return run_sections(self.url, before, sections, **options)


def _require_axe() -> str:
    node = require_browser()
    if not (BROWSER_DIR / "node_modules" / "axe-core" / "axe.min.js").is_file():
        raise BrowserUnavailable("missing axe-core: run `make test-deps`")
    return node


def run_app_session(
    base_url: str,
    steps: Sequence[object],
    timeout: float = 180.0,
    *,
    step_timeout_ms: int = 30_000,
    viewport: Mapping[str, int] | None = None,
    artifacts_dir: Path | None = None,
    allow_console_errors: Sequence[str] = (),
    hooks: Mapping[str, Callable[[], object]] | None = None,
    expect_ok: bool = True,
    require_accessible: bool = True,
) -> dict[str, Any]:
    """Runs the steps (dicts of tests/browser/app_session.mjs's vocabulary) in one browser
    session and returns the script's report.

    `hooks` are called at the matching {"pause": label} steps while the page stays open (a
    study sent, an order placed), the browser waiting. With `expect_ok` (the default) a failed
    run raises SessionFailed saying why; with `require_accessible` so does any serious or
    critical axe-core violation found by an {"axe": ...} step."""
    node = _require_axe()
    artifacts = Path(artifacts_dir or tempfile.mkdtemp(prefix="app-session-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "baseUrl": base_url,
        "timeoutMs": step_timeout_ms,
        "artifactsDir": str(artifacts),
        "allowConsoleErrors": list(allow_console_errors),
        "steps": list(steps),
    }
    if viewport is not None:
        options["viewport"] = dict(viewport)
    report = _run(node, options, timeout, hooks or {}, artifacts / "node-stderr.txt")
    if expect_ok and not report["ok"]:
        raise SessionFailed(failure_message(report))
    if require_accessible and any(report["axe"].values()):
        raise SessionFailed(axe_message(report["axe"]))
    return report


def run_sections(
    base_url: str,
    before: Sequence[object],
    sections: Mapping[str, Sequence[object]],
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """`before` (a login, say), then each section's steps, all in ONE browser session: a tour
    of several pages for one browser launch and one login, each page still failing on its own.

    Returns each section's record (tests/browser/app_session.mjs: its steps, its axe results,
    its policy violations and page errors) with "problem": why the section failed, in the words
    run_app_session would have raised (its failed step, violations, errors, serious or critical
    axe-core violations), or None. What failed before the sections (the login) is every
    section's problem."""
    steps: list[object] = list(before)
    for name, section_steps in sections.items():
        steps += [{"section": name}, *section_steps]
    report = run_app_session(base_url, steps, expect_ok=False, require_accessible=False, **options)
    before_problem = _before_sections_problem(report)
    records = report.get("sections", {})
    outcomes: dict[str, dict[str, Any]] = {}
    for name in sections:
        record = records.get(name)
        if record is None:
            outcomes[name] = {
                "ok": False,
                "steps": [],
                "axe": {},
                "problem": f"the session ended before this section: {failure_message(report)}",
            }
            continue
        problems = [text for text in (before_problem, _section_problem(record)) if text]
        outcomes[name] = {**record, "problem": "\n".join(problems) or None}
    return outcomes


def _before_sections_problem(report: Mapping[str, Any]) -> str | None:
    before = report.get("beforeSections") or {}
    lines = [
        f"before the sections, {key}: " + "\n  ".join(before[key])
        for key in ("cspViolations", "errors")
        if before.get(key)
    ]
    return "\n".join(lines) or None


def _section_problem(record: Mapping[str, Any]) -> str | None:
    lines: list[str] = []
    if not record["ok"]:
        lines.append(f"the section failed: {record.get('error') or 'see below'}")
        if record.get("screenshot"):
            lines.append(f"screenshot of the page: {record['screenshot']}")
        for key in ("cspViolations", "errors", "httpErrors"):
            if record.get(key):
                lines.append(f"{key}: " + "\n  ".join(record[key]))
        lines.append("steps: " + ", ".join(f"{s['name']} ({s['ms']} ms)" for s in record["steps"]))
    if any(record["axe"].values()):
        lines.append(axe_message(record["axe"]))
    return "\n".join(lines) or None


def _run(
    node: str,
    options: dict[str, Any],
    timeout: float,
    hooks: Mapping[str, Callable[[], object]],
    stderr_path: Path,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [node, str(SCRIPT), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert process.stdin is not None and process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stream: Any) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, args=(process.stdout,), daemon=True).start()
        last: dict[str, Any] | None = None
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise SessionFailed(f"the browser session took over {timeout} s") from None
                if line is None:
                    break
                if not line.startswith("{"):
                    continue
                message = json.loads(line)
                if "pause" in message:
                    label = message["pause"]
                    if label not in hooks:
                        raise SessionFailed(f"no hook for the step {{'pause': {label!r}}}")
                    hooks[label]()
                    process.stdin.write("continue\n")
                    process.stdin.flush()
                else:
                    last = message
        finally:
            if process.poll() is None and last is None:
                process.kill()
            process.wait(30)
    if last is None:
        raise SessionFailed(
            f"the browser script printed no report:\n{stderr_path.read_text()[-3000:]}"
        )
    return last


def failure_message(report: Mapping[str, Any]) -> str:
    lines = [f"the browser session failed: {report.get('error') or 'see below'}"]
    if report.get("screenshot"):
        lines.append(f"screenshot of the page: {report['screenshot']}")
    for key in ("cspViolations", "errors", "httpErrors"):
        if report.get(key):
            lines.append(f"{key}: " + "\n  ".join(report[key]))
    lines.append("steps: " + ", ".join(f"{s['name']} ({s['ms']} ms)" for s in report["steps"]))
    return "\n".join(lines)


def axe_message(found: Mapping[str, list[dict[str, Any]]]) -> str:
    lines = ["axe-core found serious or critical violations:"]
    for name, violations in found.items():
        for violation in violations:
            targets = "; ".join(" ".join(node["target"]) for node in violation["nodes"])
            lines.append(
                f"  {name}: {violation['id']} ({violation['impact']}) {violation['help']}"
                f" at {targets} ({violation['helpUrl']})"
            )
    return "\n".join(lines)


# --- fixtures (tests/web/conftest.py imports them) ---------------------------------------------


@pytest.fixture
def page_users(stack: Stack) -> dict[str, PageUser]:
    """A user of each role on the test's stack (make_page_users)."""
    return make_page_users(stack)


def make_page_users(stack: Stack) -> dict[str, PageUser]:
    """A user of each role on the stack, made over the API: the stack's admin, and
    `page.<role>` for the others (the physician has provider id PHYSICIAN_PROVIDER_ID, so
    orders naming it put their patients in that physician's care)."""
    users = {"admin": PageUser("admin", STACK_ADMIN_PASSWORD, "admin")}
    for role in ROLES[1:]:
        body: dict[str, Any] = {
            "username": f"page.{role}",
            "password": PAGE_USER_PASSWORD,
            "role": role,
        }
        if role == "physician":
            body["providerId"] = PHYSICIAN_PROVIDER_ID
        made = stack.api("POST", "/api/users", json=body)
        assert made.status_code == 201, made.text
        users[role] = PageUser(body["username"], PAGE_USER_PASSWORD, role)
    return users


def start_app_front(kind: str, stack: Stack, work_dir: Path) -> Iterator[AppFront]:
    """The stack's sidecar as the browser reaches it: directly, or through nginx."""
    assert stack.sidecar is not None, "the sidecar is not running"
    artifacts = work_dir / f"browser-{kind}"
    artifacts.mkdir(parents=True, exist_ok=True)
    if kind == "sidecar":
        yield AppFront(kind, stack.sidecar.url, stack, artifacts)
        return
    assert kind == "nginx", kind
    nginx = start_nginx_front(
        work_dir / "nginx",
        orthanc=f"127.0.0.1:{stack.layout.http_port}",
        sidecar=f"127.0.0.1:{stack.sidecar_port}",
    )
    try:
        yield AppFront(kind, nginx.url, stack, artifacts)
    finally:
        nginx.stop()


@pytest.fixture(params=["sidecar", "nginx"])
def app_front(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[AppFront]:
    """Each test runs twice: against the sidecar's own front and against nginx's."""
    yield from start_app_front(request.param, stack, tmp_path)


@pytest.fixture
def sidecar_front(stack: Stack, tmp_path: Path) -> Iterator[AppFront]:
    yield from start_app_front("sidecar", stack, tmp_path)


@pytest.fixture
def nginx_app_front(stack: Stack, tmp_path: Path) -> Iterator[AppFront]:
    yield from start_app_front("nginx", stack, tmp_path)


def ready_stat_study(stack: Any) -> int:
    """A STAT order and its study, marked COMPLETED (ready to read) over the API."""
    order = stack.api(
        "POST",
        "/api/imaging-orders",
        json={
            "patientId": "PAGE-0001",
            "issuerOfPatientId": "HOSP",
            "patientName": "DOE^JANE",
            "modality": "CT",
            "bodyPart": "HEAD",
            "procedureCode": "CTHEAD",
            "procedureDescription": "CT head",
            "priority": "STAT",
            "clinicalIndication": "Fall, headache",
            "placerOrderNumber": "PAGE-1",
        },
    )
    assert order.status_code == 201, order.text
    study = stack.api(
        "POST",
        "/api/studies",
        json={
            "patientId": "PAGE-0001",
            "issuerOfPatientId": "HOSP",
            "patientName": "DOE^JANE",
            "accessionNumber": order.json()["accessionNumber"],
            "modalities": ["CT"],
        },
    )
    assert study.status_code == 201, study.text
    study_id: int = study.json()["id"]
    linked = stack.api(
        "POST", f"/api/studies/{study_id}/link-order", json={"orderId": order.json()["id"]}
    )
    assert linked.status_code == 200, linked.text
    ready = stack.api("PATCH", f"/api/studies/{study_id}/status", json={"status": "COMPLETED"})
    assert ready.status_code == 200, ready.text
    return study_id
