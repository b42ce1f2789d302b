"""The viewer's login page: a plain HTML form, no script needed to log in.

The same rules as the API's login apply (sidecar.accounts.login): lockout (429), a two-factor
code field once the account turns out to need one, and a refusal for an account that must first
change its password or, as an administrator, set up two-factor authentication.

It is answered with 401 at whatever viewer URL was asked for without a session, so the browser
keeps that URL; a one-line script copies it into the form's `next` field when the server could
not (nginx in docker-compose serves this page for any path).
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Radiology viewer: log in</title>
<style>
body{{font-family:system-ui,sans-serif;background:#090c29;color:#e7e9f0;display:flex;
justify-content:center;align-items:center;min-height:100vh;margin:0}}
form{{background:#151a3d;padding:2rem;border-radius:8px;width:18rem}}
label{{display:block;margin-top:1rem}} input{{width:100%;padding:.4rem;box-sizing:border-box}}
button{{margin-top:1.5rem;width:100%;padding:.5rem}} .error{{color:#ff8a80}}
</style></head>
<body><main><form method="post" action="/login" id="login">
<h1>Radiology viewer</h1>
{error}
<label>User name <input name="username" autocomplete="username" required maxlength="64"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required
maxlength="256"></label>
{totp}<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form></main>
<script>{script}</script>
</body></html>
"""
# The page's one script, allowed by its hash in the Content-Security-Policy
# (sidecar.viewer.headers): the policy refuses every other inline script.
LOGIN_SCRIPT = """
var n = document.querySelector('input[name=next]');
if (!n.value && location.pathname !== '/login') n.value = location.pathname + location.search;
"""


# Shown once the account turns out to need it (the form is sent again with the code).
_TOTP_FIELD = """<label>Two-factor code <input name="totp_code" autocomplete="one-time-code"
inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required autofocus></label>
"""


def login_page(*, next_url: str = "", error: str = "", ask_totp: bool = False) -> str:
    shown = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    next_value = escape(safe_next(next_url) if next_url else "")
    return _PAGE.format(
        error=shown, next=next_value, script=LOGIN_SCRIPT, totp=_TOTP_FIELD if ask_totp else ""
    )


def safe_next(next_url: str) -> str:
    """A same-origin path to return to after login; anything else becomes `/`.

    `//host` and `/\\host` are other origins to a browser, and a scheme or host means the same:
    an open redirect would hand a freshly logged-in user to another site.
    """
    if not next_url.startswith("/") or next_url.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(next_url)
    if parts.scheme or parts.netloc or any(c in next_url for c in "\r\n\x00"):
        return "/"
    return next_url
