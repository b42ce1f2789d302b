"""Running tests/browser/open_study.mjs (playwright-core driving Debian's Chromium) from Python,
for the browser test and the viewer benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
CHROMIUM = Path("/usr/bin/chromium")


class BrowserUnavailable(RuntimeError):
    pass


def require_browser() -> str:
    """The node binary; fails loudly when something `make test-deps` installs is missing."""
    node = shutil.which("node")
    missing = [
        what
        for what, present in (
            ("node", node is not None),
            (str(CHROMIUM), CHROMIUM.exists()),
            ("playwright-core", (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()),
        )
        if not present
    ]
    if missing or node is None:
        raise BrowserUnavailable(f"missing {', '.join(missing)}: run `make test-deps`")
    return node


def open_study(options: dict[str, Any], *, timeout: float = 180.0) -> dict[str, Any]:
    """Runs the script with `options` (see open_study.mjs) and returns its JSON report."""
    node = require_browser()
    done = subprocess.run(
        [node, str(BROWSER_DIR / "open_study.mjs"), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the browser script printed no report:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report
