"""The rules a new password must follow, whoever sets it (an administrator creating or resetting
an account, or the user changing their own): long enough, not the user name, not a common
password. Each refusal names its rule."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sidecar.accounts.models import MIN_PASSWORD_LENGTH
from sidecar.core.errors import UnacceptableValue

_COMMON = Path(__file__).with_name("common_passwords.txt")
# What people put around a common word to pass a length rule: digits, symbols, spaces.
_PADDING = re.compile(r"^[\W\d_]+|[\W\d_]+$")
# A short run repeated: "aaaaaaaaaaaa", "abcabcabcabc", "passwordpassword".
_REPEATED = re.compile(r"^(.{1,8}?)\1+$", re.DOTALL)


@cache
def common_passwords() -> frozenset[str]:
    lines = _COMMON.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def password_problem(password: str, username: str) -> str | None:
    """Why `password` may not be `username`'s, or None when it may."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters long"
    lowered, name = password.lower(), username.lower()
    if name and name in lowered:
        return "must not contain the user name"
    common = common_passwords()
    stripped = _PADDING.sub("", lowered)
    repeated = _REPEATED.match(lowered) or _REPEATED.match(stripped)
    if (
        lowered in common
        or stripped in common
        or (repeated is not None and (len(repeated.group(1)) <= 4 or repeated.group(1) in common))
        or not stripped
    ):
        return "is too common: a well-known password, or one with digits or symbols added"
    return None


def check_password(password: str, username: str, *, location: str = "body.password") -> None:
    """Raises UnacceptableValue (422) naming the rule `password` breaks."""
    problem = password_problem(password, username)
    if problem is not None:
        raise UnacceptableValue(location, f"the password {problem}")
