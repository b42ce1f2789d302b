"""Signed links to one image (seed 001's "SAS token"): a URL that fetches one instance's file,
or Orthanc's rendering of it, without a token until it expires (sidecar.core.signed_links).

A link names the image, the format and its expiry; any change to one of the three, another
image's id included, no longer matches the signature. Links last IMAGE_URL_MINUTES (at most 60).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlencode

from sidecar.core import signed_links
from sidecar.core.signed_links import MAX_LINK_MINUTES, InvalidLink, link_key

__all__ = [
    "MAX_LINK_MINUTES",
    "ImageFormat",
    "InvalidLink",
    "SignedLink",
    "check_link",
    "link_key",
    "make_link",
    "signature",
]

_KIND = "image-link"


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


def signature(key: bytes, image_id: int, image_format: ImageFormat, expires: int) -> str:
    return signed_links.sign(key, _KIND, (image_id, image_format.value), expires)


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
    expires = signed_links.expiry(now, minutes)
    query = urlencode(
        {
            "format": image_format.value,
            "expires": expires,
            "signature": signature(key, image_id, image_format, expires),
        }
    )
    return SignedLink(
        url=f"{public_url}/api/images/{image_id}/file?{query}",
        expires_at=signed_links.expires_at(expires),
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
    try:
        chosen: ImageFormat | None = ImageFormat(image_format or "")
    except ValueError:
        chosen = None
    signed_links.check(
        key,
        _KIND,
        (image_id, chosen.value) if chosen is not None else None,
        given={"format": image_format, "expires": expires, "signature": signature_given},
        now=now,
        what="this image link",
        renew=f"ask for a new one with GET /api/images/{image_id}/url",
    )
    assert chosen is not None
    return chosen
