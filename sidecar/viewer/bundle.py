"""The OHIF Viewer as this service ships it: the prebuilt bundle from npm (@ohif/app's dist/),
our app-config.js beside it, and the link that opens one study.

The bundle is built for the root of its origin; serving it under a sub-path would need its
index.html, webpack public path and a CSS font URL rewritten, so the sidecar serves it at `/` of
its own origin, next to the proxied /dicom-web.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

# The npm install of the viewer and its configuration, beside the Python packages.
VIEWER_PACKAGE_DIR = Path(__file__).resolve().parents[2] / "viewer"
DEFAULT_DIST = VIEWER_PACKAGE_DIR / "node_modules" / "@ohif" / "app" / "dist"
APP_CONFIG = VIEWER_PACKAGE_DIR / "app-config.js"
INSTALL_HINT = "run `make viewer` (npm ci in viewer/)"


class ViewerNotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class ViewerBundle:
    """The installed dist/ folder. Lookups never leave it, whatever the request path holds."""

    dist: Path

    @classmethod
    def locate(cls, dist: Path | None = None) -> ViewerBundle:
        folder = (dist or DEFAULT_DIST).resolve()
        if not (folder / "index.html").is_file():
            raise ViewerNotInstalled(
                f"the OHIF viewer is not installed in {folder}: {INSTALL_HINT}"
            )
        return cls(folder)

    @property
    def index_html(self) -> Path:
        return self.dist / "index.html"

    def file(self, relative: str) -> Path | None:
        """The file at `relative` inside dist/, or None (a client-side route of the app)."""
        if relative == "app-config.js":
            return APP_CONFIG
        if not relative or "\x00" in relative:
            return None
        candidate = (self.dist / relative).resolve()
        if not candidate.is_relative_to(self.dist) or not candidate.is_file():
            return None
        return candidate


def viewer_url(base_url: str, study_instance_uid: str) -> str:
    """OHIF's link to one study: its viewer route with the StudyInstanceUIDs parameter."""
    return f"{base_url}/viewer?{urlencode({'StudyInstanceUIDs': study_instance_uid})}"


def default_base_url(host: str, port: int) -> str:
    # A wildcard bind address is not something a browser can open.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    return f"http://{shown}:{port}"
