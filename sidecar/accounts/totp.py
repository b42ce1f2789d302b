"""Two-factor authentication with time-based one-time passwords (RFC 6238, pyotp): 6 digits,
30-second steps, one step of clock drift either way, and each code accepted once.

The shared secret is stored encrypted under a key derived from JWT_SECRET (HMAC-SHA256 in
counter mode, then HMAC-SHA256 over nonce and ciphertext), so a copy of the database alone does
not give the codes away. Changing JWT_SECRET therefore means enrolling again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

import pyotp
from sqlalchemy import or_, update
from sqlmodel import Session, col

from sidecar.accounts.models import User
from sidecar.core.models import table_of

ISSUER = "Radiology sidecar"
_STEP_SECONDS = 30
_DRIFT_STEPS = 1
_NONCE, _TAG = 16, 16
_VERSION = "v1:"


class UnreadableSecret(Exception):
    """The stored secret was encrypted under another JWT_SECRET, or altered."""


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def _keys(jwt_secret: str) -> tuple[bytes, bytes]:
    root = hashlib.sha256(b"sidecar totp secret key\x00" + jwt_secret.encode()).digest()
    return (
        hmac.new(root, b"encrypt", hashlib.sha256).digest(),
        hmac.new(root, b"authenticate", hashlib.sha256).digest(),
    )


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (
        hmac.new(key, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        for counter in range((length + 31) // 32)
    )
    return b"".join(blocks)[:length]


def encrypt_secret(secret: str, jwt_secret: str) -> str:
    encryption_key, mac_key = _keys(jwt_secret)
    nonce = secrets.token_bytes(_NONCE)
    plain = secret.encode()
    cipher = bytes(
        a ^ b for a, b in zip(plain, _keystream(encryption_key, nonce, len(plain)), strict=True)
    )
    tag = hmac.new(mac_key, nonce + cipher, hashlib.sha256).digest()[:_TAG]
    return _VERSION + base64.urlsafe_b64encode(nonce + cipher + tag).decode()


def decrypt_secret(stored: str, jwt_secret: str) -> str:
    if not stored.startswith(_VERSION):
        raise UnreadableSecret("unknown format")
    try:
        raw = base64.urlsafe_b64decode(stored[len(_VERSION) :])
    except ValueError as exc:
        raise UnreadableSecret("not base64") from exc
    nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    encryption_key, mac_key = _keys(jwt_secret)
    expected = hmac.new(mac_key, nonce + cipher, hashlib.sha256).digest()[:_TAG]
    if len(raw) <= _NONCE + _TAG or not hmac.compare_digest(tag, expected):
        raise UnreadableSecret("the secret does not authenticate under this JWT_SECRET")
    stream = _keystream(encryption_key, nonce, len(cipher))
    return bytes(a ^ b for a, b in zip(cipher, stream, strict=True)).decode()


def matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step whose code `code` is (this one or one either side), else None."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // _STEP_SECONDS
    found = None
    for step in range(current - _DRIFT_STEPS, current + _DRIFT_STEPS + 1):
        # Every candidate is compared (no early exit): the time taken says nothing.
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def use_code(session: Session, user: User, code: str, jwt_secret: str, now: datetime) -> bool:
    """Whether `code` is good for the user's secret and not used before; if so, marks its step
    used, atomically (two nodes given the same code at once accept it once)."""
    if user.totp_secret is None or user.id is None:
        return False
    try:
        secret = decrypt_secret(user.totp_secret, jwt_secret)
    except UnreadableSecret:
        return False
    step = matching_step(secret, code, now)
    if step is None:
        return False
    table = table_of(User)
    claimed = session.connection().execute(
        update(table)
        .where(
            table.c.id == user.id,
            or_(col(table.c.totp_last_step).is_(None), table.c.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    if claimed.rowcount != 1:
        return False
    user.totp_last_step = step
    return True
