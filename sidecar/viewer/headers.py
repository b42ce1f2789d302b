"""The security headers both viewer fronts send with every answer: one definition, here.

The sidecar adds them itself (sidecar.core.http.SecurityHeaders, given `sidecar_headers`);
viewer/nginx.conf holds `nginx_map()` and `nginx_add_headers()` verbatim, which
tests/viewer/test_security_headers.py keeps so (print them with `python -m
sidecar.viewer.headers` after changing a rule).

The Content-Security-Policy is what OHIF 3.12 runs under, found with the headless browser test
(tests/viewer/test_viewer_browser.py fails on any violation):
- scripts: this origin's files, WebAssembly compilation ('wasm-unsafe-eval', the image codecs
  are WebAssembly), and the inline scripts by their hashes: OHIF's index.html has two, the
  login page one. No 'unsafe-inline', no 'unsafe-eval' for scripts.
- workers (codecs, histograms) from this origin and from blob: URLs;
- styles: this origin, and inline (OHIF's components set style attributes at run time);
- images, fonts and fetches: this origin, data: and blob: URLs (drawn frames, thumbnails);
- nothing from another origin, no plugins, no <base> elsewhere, forms posted here only, and
  no framing by another site (frame-ancestors, and X-Frame-Options for older browsers).
"""

from __future__ import annotations

import base64
import hashlib

from sidecar.viewer.login import LOGIN_SCRIPT


def script_hash(source: str) -> str:
    """A CSP source allowing the inline script whose text is `source`."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# The inline scripts of OHIF's index.html (@ohif/app 3.12.0, the npm package `make viewer`
# installs and the ohif/app:v3.12.0 image of docker-compose; tests/viewer/test_security_headers.py
# checks them against the installed index.html, so an upgrade that changes them fails there).
OHIF_INLINE_SCRIPTS = (
    "'sha256-RUJKPsAHcLA3YS8dWuPEiqEPTlkfTEHKow0zXWj7MBE='",
    "'sha256-zswedvCtAY8+yo2fcmo5BFhq2rYoxFvEm9kQ3FEcJB0='",
)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        " ".join(
            [
                "script-src 'self' 'wasm-unsafe-eval'",
                *OHIF_INLINE_SCRIPTS,
                script_hash(LOGIN_SCRIPT),
            ]
        ),
        "worker-src 'self' blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)

# Every answer, whatever its type or status: API JSON included (nosniff).
COMMON_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Referrer-Policy", "no-referrer"),
)
# Only when users reach the front over https: browsers ignore it over http, but an http-only
# deployment should not announce https it does not offer.
STRICT_TRANSPORT_SECURITY = ("Strict-Transport-Security", "max-age=31536000")


def sidecar_headers(public_viewer_url: str) -> list[tuple[str, str]]:
    """The sidecar's: Strict-Transport-Security too when PUBLIC_VIEWER_URL is https."""
    headers = list(COMMON_HEADERS)
    if public_viewer_url.startswith("https://"):
        headers.append(STRICT_TRANSPORT_SECURITY)
    return headers


def nginx_map() -> str:
    """viewer/nginx.conf's map (http level) deciding Strict-Transport-Security: sent when the
    request came over https, to nginx itself or to the TLS proxy in front of it, which says so
    in X-Forwarded-Proto (a client claiming https over plain http gains nothing: browsers
    ignore the header over http)."""
    _, value = STRICT_TRANSPORT_SECURITY
    return (
        "\n".join(
            [
                'map "$scheme:$http_x_forwarded_proto" $strict_transport_security {',
                f'    "~^https:" "{value}";',
                f'    "~:https$" "{value}";',
                '    default "";',
                "}",
            ]
        )
        + "\n"
    )


def nginx_add_headers() -> str:
    """viewer/nginx.conf's lines (server level, `always`: error pages too) that send them.
    nginx gives a location with an add_header (or proxy_hide_header) of its own none of the
    server's, so no location in the file may have one (tests/viewer/test_security_headers.py)."""
    name, _ = STRICT_TRANSPORT_SECURITY
    lines = [
        *(f'    add_header {header} "{text}" always;' for header, text in COMMON_HEADERS),
        f"    add_header {name} $strict_transport_security always;",
        # An upstream's own copies (the sidecar sends them too, under `make run`) are dropped:
        # one of each reaches the browser.
        *(f"    proxy_hide_header {header};" for header, _ in COMMON_HEADERS),
        f"    proxy_hide_header {name};",
    ]
    for line in lines:
        if '\\"' in line or "\\\\" in line:
            raise ValueError(f"nginx would rewrite an escape in {line!r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(nginx_map(), nginx_add_headers(), sep="\n", end="")
