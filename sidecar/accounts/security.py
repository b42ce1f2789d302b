"""Password hashing (pwdlib, Argon2id) and access tokens (PyJWT, HS256)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from pwdlib import PasswordHash

from sidecar.accounts.models import Role, TokenScope
from sidecar.core.models import utcnow

_ALGORITHM = "HS256"
_password_hash = PasswordHash.recommended()
# Verifying against this when the user does not exist keeps login time independent of whether
# a username is known.
_DUMMY_HASH = _password_hash.hash("not-a-real-password-but-hashed-the-same-way")


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        _password_hash.verify(password, _DUMMY_HASH)
        return False
    return _password_hash.verify(password, password_hash)


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    username: str
    role: Role
    issued_at: datetime
    expires_at: datetime
    scope: TokenScope = TokenScope.FULL


class InvalidToken(Exception):
    pass


def create_access_token(
    *,
    user_id: int,
    username: str,
    role: Role,
    secret: str,
    lifetime: timedelta,
    scope: TokenScope = TokenScope.FULL,
) -> tuple[str, int]:
    now = utcnow()
    payload: dict[str, object] = {
        "sub": str(user_id),
        "name": username,
        "role": role.value,
        # Sub-second precision: a token issued right after a password change must still be
        # newer than the change (see credentials_changed_at).
        "iat": now.timestamp(),
        "exp": int((now + lifetime).timestamp()),
    }
    if scope is not TokenScope.FULL:
        payload["scope"] = scope.value
    return jwt.encode(payload, secret, algorithm=_ALGORITHM), int(lifetime.total_seconds())


def decode_access_token(token: str, secret: str) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            options={"require": ["sub", "exp", "iat", "role"]},
        )
        return TokenClaims(
            user_id=int(payload["sub"]),
            username=str(payload.get("name", "")),
            role=Role(payload["role"]),
            issued_at=datetime.fromtimestamp(float(payload["iat"]), UTC),
            expires_at=datetime.fromtimestamp(payload["exp"], UTC),
            # A token without a scope is a full one (every token issued before scopes existed).
            scope=TokenScope(payload.get("scope", TokenScope.FULL.value)),
        )
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise InvalidToken(str(exc)) from exc


def secrets_match(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
