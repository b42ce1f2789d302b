"""Signed links to one image (seed 001's "SAS token"): a URL that fetches one instance's file,
or Orthanc's rendering of it, without a token until it expires.

A link names the image, the format and its expiry (Unix seconds), and carries an HMAC-SHA256
over the three under a key of the sidecar's: derived from JWT_SECRET with a label of its own, so
it signs nothing else and nothing else signs links (changing JWT_SECRET ends every link). Any
change to one of the three, another image's id included, no longer matches the signature.
Signatures are compared in constant time. Links last IMAGE_URL_MINUTES (at most 60).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlencode

from sidecar.core.errors import NotPermitted

#: The longest a link may work, whatever the settings say (IMAGE_URL_MINUTES is capped there).
MAX_LINK_MINUTES = 60
_KEY_LABEL = b"sidecar image link key\x00"


class ImageFormat(StrEnum):
    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    ImageFormat.DICOM: "application/dicom",
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
}


class InvalidLink(NotPermitted):
    """403: the link was altered, is incomplete, or has expired."""


def link_key(jwt_secret: str) -> bytes:
    return hashlib.sha256(_KEY_LABEL + jwt_secret.encode()).digest()


def signature(key: bytes, image_id: int, image_format: ImageFormat, expires: int) -> str:
    message = f"image-link:v1\n{image_id}\n{image_format.value}\n{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SignedLink:
    url: str
    expires_at: datetime


def make_link(
    key: bytes,
    public_url: str,
    image_id: int,
    image_format: ImageFormat,
    *,
    now: datetime,
    minutes: int,
) -> SignedLink:
    """The absolute link, on `public_url`, to the image in that format until now + minutes."""
    minutes = max(1, min(minutes, MAX_LINK_MINUTES))
    expires = int((now + timedelta(minutes=minutes)).timestamp())
    query = urlencode(
        {
            "format": image_format.value,
            "expires": expires,
            "signature": signature(key, image_id, image_format, expires),
        }
    )
    return SignedLink(
        url=f"{public_url}/api/images/{image_id}/file?{query}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


def check_link(
    key: bytes,
    image_id: int,
    *,
    image_format: str | None,
    expires: str | None,
    signature_given: str | None,
    now: datetime,
) -> ImageFormat:
    """The format the link was signed for, when the link is intact and current; InvalidLink
    (403) saying what is wrong otherwise."""
    missing = [
        name
        for name, value in (
            ("format", image_format),
            ("expires", expires),
            ("signature", signature_given),
        )
        if not value
    ]
    if missing:
        raise InvalidLink(
            f"this image link is incomplete (no {', '.join(missing)}): ask for a new one with "
            f"GET /api/images/{image_id}/url"
        )
    assert image_format is not None and expires is not None and signature_given is not None
    try:
        chosen = ImageFormat(image_format)
        expiry = int(expires) if expires.isdigit() and len(expires) <= 12 else None
    except ValueError:
        chosen, expiry = None, None
    expected = signature(key, image_id, chosen, expiry) if chosen and expiry is not None else ""
    # Compared even when the values above are malformed, in constant time for their length.
    if not hmac.compare_digest(expected.encode(), signature_given.encode()) or chosen is None:
        raise InvalidLink(
            "this image link is not valid: its signature does not match the image, format and "
            "expiry it names (links cannot be changed; ask for a new one)"
        )
    assert expiry is not None
    remaining = expiry - now.timestamp()
    if remaining <= 0:
        raise InvalidLink(
            f"this image link has expired: ask for a new one with GET /api/images/{image_id}/url"
        )
    if remaining > MAX_LINK_MINUTES * 60 + 60:
        raise InvalidLink("this image link expires later than any link may: ask for a new one")
    return chosen
