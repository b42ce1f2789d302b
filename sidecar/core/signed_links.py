"""Signed, time-limited links: a URL that works without a token until it expires, because it
carries an HMAC-SHA256 over what it names and its expiry (Unix seconds).

Each kind of link (an image's file, a de-identified copy's archive) signs a message of its own:
the kind's name, then the values the link names, then the expiry, so that a signature made for
one kind, one resource or one expiry matches nothing else. The key is derived from JWT_SECRET
with a label of its own, so it signs nothing but links and nothing else signs links (changing
JWT_SECRET ends every link). Signatures are compared in constant time. No link works longer
than MAX_LINK_MINUTES, whatever it says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from sidecar.core.errors import NotPermitted

#: The longest a link may work, whatever the settings say (IMAGE_URL_MINUTES is capped there).
MAX_LINK_MINUTES = 60
# The label first signed image links only; kept, so links made before the other kinds existed
# stay valid until they expire.
_KEY_LABEL = b"sidecar image link key\x00"


class InvalidLink(NotPermitted):
    """403: the link was altered, is incomplete, or has expired."""


def link_key(jwt_secret: str) -> bytes:
    return hashlib.sha256(_KEY_LABEL + jwt_secret.encode()).digest()


def sign(key: bytes, kind: str, values: tuple[str | int, ...], expires: int) -> str:
    """The signature of a link of `kind` naming `values` until `expires`."""
    lines = [f"{kind}:v1", *(str(value) for value in values), str(expires)]
    digest = hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def expiry(now: datetime, minutes: int) -> int:
    """When a link made now for `minutes` ends (Unix seconds), within 1..MAX_LINK_MINUTES."""
    minutes = max(1, min(minutes, MAX_LINK_MINUTES))
    return int((now + timedelta(minutes=minutes)).timestamp())


def expires_at(expires: int) -> datetime:
    return datetime.fromtimestamp(expires, UTC)


def check(
    key: bytes,
    kind: str,
    values: tuple[str | int, ...] | None,
    *,
    given: dict[str, str | None],
    now: datetime,
    what: str,
    renew: str,
) -> None:
    """Returns when the link is intact and current; InvalidLink (403) saying what is wrong
    otherwise. `given` holds the link's query parameters, `expires` and `signature` among them
    (every one must be present); `values` are what the link names, None when a value the caller
    read from the query is malformed (the link then fails as altered). `what` names the link in
    messages ("this image link"), `renew` says how to get a new one."""
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise InvalidLink(f"{what} is incomplete (no {', '.join(missing)}): {renew}")
    expires, signature_given = given.get("expires") or "", given.get("signature") or ""
    # ASCII digits only: str.isdigit() also holds for "²", which int() refuses (a 500).
    well_formed = expires.isascii() and expires.isdigit() and len(expires) <= 12
    expiry_time = int(expires) if well_formed else None
    expected = sign(key, kind, values, expiry_time) if values and expiry_time is not None else ""
    # Compared even when the values above are malformed, in constant time for their length.
    if not hmac.compare_digest(expected.encode(), signature_given.encode()) or not expected:
        raise InvalidLink(
            f"{what} is not valid: its signature does not match what it names and its expiry "
            "(links cannot be changed; ask for a new one)"
        )
    assert expiry_time is not None
    remaining = expiry_time - now.timestamp()
    if remaining <= 0:
        raise InvalidLink(f"{what} has expired: {renew}")
    if remaining > MAX_LINK_MINUTES * 60 + 60:
        raise InvalidLink(f"{what} expires later than any link may: ask for a new one")
