"""The page tests' browser session (tests/browser/app_session.mjs) catches what they rely on it
to catch: an inline script the Content-Security-Policy refuses, a script error, an unlabelled
field, a change that came by reloading the page rather than live; and it times a live update,
lets the test act while the page is open, and reads a download's type.

Against small pages served here under the fronts' own policy (sidecar.viewer.headers), so each
failure is certain to be there."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.viewer.headers import CONTENT_SECURITY_POLICY

from app_browser import SessionFailed, run_app_session, run_sections
from stack import free_port

_HEAD = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
PAGES = {
    "/inline": "<main><h1>Inline</h1><script>document.title = 'ran';</script></main>",
    "/broken": '<main><h1>Broken</h1><script src="/broken.js"></script></main>',
    "/unlabelled": "<main><h1>Search</h1><input name=q></main>",
    "/live": '<main><h1>Live</h1><ul id="rows"></ul><script src="/live.js"></script></main>',
    "/reloads": '<main><h1>Reloads</h1><script src="/reload.js"></script></main>',
    "/reloaded": "<main><h1>Reloaded</h1><p>Arrived</p></main>",
    "/download": '<main><h1>Report</h1><a href="/report.pdf">Report PDF</a></main>',
}
SCRIPTS = {
    "/broken.js": "undefinedFunction();",
    # A row arrives while the page stays open, as an htmx swap after a server event would.
    "/live.js": "setTimeout(() => { const li = document.createElement('li');"
    " li.textContent = 'Arrived'; document.getElementById('rows').append(li); }, 300);",
    "/reload.js": "setTimeout(() => location.assign('/reloaded'), 300);",
}
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
        if self.path in PAGES:
            title = self.path.strip("/")
            body = (_HEAD.format(title=title) + f"<body>{PAGES[self.path]}</body></html>").encode()
            headers["Content-Type"] = "text/html; charset=utf-8"
        elif self.path in SCRIPTS:
            body = SCRIPTS[self.path].encode()
            headers["Content-Type"] = "text/javascript"
        elif self.path == "/report.pdf":
            body = PDF
            headers["Content-Type"] = "application/pdf"
            headers["Content-Disposition"] = 'attachment; filename="report.pdf"'
        else:
            self.send_error(404)
            return
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pages_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_an_inline_script_fails_the_run_as_a_policy_violation(
    pages_url: str, tmp_path: Path
) -> None:
    report = run_app_session(
        pages_url, [{"goto": "/inline"}], artifacts_dir=tmp_path, expect_ok=False
    )
    assert not report["ok"]
    assert any("script-src" in violation for violation in report["cspViolations"])
    with pytest.raises(SessionFailed, match="cspViolations"):
        run_app_session(pages_url, [{"goto": "/inline"}], artifacts_dir=tmp_path)


def test_a_script_error_fails_the_run(pages_url: str, tmp_path: Path) -> None:
    with pytest.raises(SessionFailed, match="undefinedFunction"):
        run_app_session(pages_url, [{"goto": "/broken"}], artifacts_dir=tmp_path)


def test_an_unlabelled_field_is_a_critical_axe_violation(pages_url: str, tmp_path: Path) -> None:
    """axe-core runs although the policy refuses inline scripts, and adds no violation itself."""
    steps = [{"goto": "/unlabelled"}, {"axe": {"name": "search"}}]
    report = run_app_session(pages_url, steps, artifacts_dir=tmp_path, require_accessible=False)
    assert report["ok"] and report["cspViolations"] == []
    assert [(v["id"], v["impact"]) for v in report["axe"]["search"]] == [("label", "critical")]
    with pytest.raises(SessionFailed, match=r"search: label \(critical\)"):
        run_app_session(pages_url, steps, artifacts_dir=tmp_path)


def test_a_failed_step_says_which_and_leaves_a_screenshot(pages_url: str, tmp_path: Path) -> None:
    steps = [{"goto": "/live"}, {"click": {"role": "button", "name": "Claim"}}]
    with pytest.raises(SessionFailed, match=r"step 1 \(click Claim\) failed") as failed:
        run_app_session(pages_url, steps, artifacts_dir=tmp_path, step_timeout_ms=1000)
    assert f"screenshot of the page: {tmp_path / 'failure.png'}" in str(failed.value)
    assert (tmp_path / "failure.png").stat().st_size > 0


def test_a_live_update_is_timed_and_the_test_acts_while_the_page_is_open(
    pages_url: str, tmp_path: Path
) -> None:
    acted: list[str] = []
    report = run_app_session(
        pages_url,
        [
            {"goto": "/live"},
            {"pause": "page open"},
            {"waitForText": "Arrived", "within": "#rows", "timeoutMs": 5000},
        ],
        artifacts_dir=tmp_path,
        hooks={"page open": lambda: acted.append("sent")},
    )
    assert acted == ["sent"]
    [waited] = [step for step in report["steps"] if step["name"] == "waitForText Arrived"]
    assert 0 <= waited["waitedMs"] <= 5000


def test_text_that_came_with_a_page_load_is_no_live_update(pages_url: str, tmp_path: Path) -> None:
    steps = [{"goto": "/reloads"}, {"waitForText": "Arrived", "timeoutMs": 5000}]
    with pytest.raises(SessionFailed, match="came with a page load"):
        run_app_session(pages_url, steps, artifacts_dir=tmp_path)


def test_a_download_is_saved_with_its_content_type(pages_url: str, tmp_path: Path) -> None:
    saved = tmp_path / "saved.pdf"
    report = run_app_session(
        pages_url,
        [
            {"goto": "/download"},
            {
                "download": {
                    "role": "link",
                    "name": "Report PDF",
                    "expectContentType": "application/pdf",
                    "path": str(saved),
                }
            },
        ],
        artifacts_dir=tmp_path,
    )
    [download] = [step for step in report["steps"] if step["name"].startswith("download")]
    assert download["contentType"] == "application/pdf"
    assert download["suggestedFilename"] == "report.pdf"
    assert saved.read_bytes() == PDF


def test_sections_fail_each_on_its_own_and_the_run_goes_on(pages_url: str, tmp_path: Path) -> None:
    """One session through several pages (the accessibility tours): each section's problem is
    its own, named as a run of its own would have named it, and a failed step skips only the
    rest of its section."""
    outcomes = run_sections(
        pages_url,
        [],
        {
            "inline": [{"goto": "/inline"}],
            "claim": [
                {"goto": "/live"},
                {"click": {"role": "button", "name": "Claim"}},
                {"expectText": "Arrived"},
            ],
            "unlabelled": [{"goto": "/unlabelled"}, {"axe": {"name": "search"}}],
            "broken": [{"goto": "/broken"}],
            "download": [{"goto": "/download"}, {"axe": {"name": "report"}}],
        },
        artifacts_dir=tmp_path,
        step_timeout_ms=1000,
    )

    problems = {name: outcome["problem"] for name, outcome in outcomes.items()}
    assert "cspViolations" in problems["inline"] and "script-src" in problems["inline"]
    assert "step 4 (click Claim) failed" in problems["claim"]  # counted over the session
    assert [step["name"] for step in outcomes["claim"]["steps"]] == ["goto /live", "click Claim"]
    screenshot = tmp_path / f"failure-{list(outcomes).index('claim') + 1}.png"
    assert f"screenshot of the page: {screenshot}" in problems["claim"]
    assert screenshot.stat().st_size > 0
    assert outcomes["unlabelled"]["ok"] is True
    assert [v["id"] for v in outcomes["unlabelled"]["axe"]["search"]] == ["label"]
    assert "search: label (critical)" in problems["unlabelled"]
    assert "undefinedFunction" in problems["broken"]
    assert "inline" not in problems["broken"] and "Claim" not in problems["broken"]
    assert problems["download"] is None
    assert outcomes["download"]["axe"] == {"report": []}


def test_a_step_failing_before_the_sections_fails_every_section(
    pages_url: str, tmp_path: Path
) -> None:
    outcomes = run_sections(
        pages_url,
        [{"goto": "/live"}, {"click": {"role": "button", "name": "Log in"}}],
        {"one": [{"goto": "/download"}], "two": [{"goto": "/unlabelled"}]},
        artifacts_dir=tmp_path,
        step_timeout_ms=1000,
    )
    for outcome in outcomes.values():
        assert outcome["problem"].startswith("the session ended before this section:")
        assert "step 1 (click Log in) failed" in outcome["problem"]
