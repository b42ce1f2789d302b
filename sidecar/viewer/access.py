"""Who may look at images through the viewer front, and the record of who opened which study.

A viewer user presents the same access token the API issues, either as a bearer token or in the
`viewer_session` cookie that the login page sets (HttpOnly, so page scripts cannot read it;
SameSite=Strict, so no other site can make the browser send it). Clinicians may view: admin,
radiologist, technologist, physician, the roles that read studies through the API. The
integration role is a machine account and may not.

Every proxied request is checked, so the account lookup that catches a disabled user or a changed
password is cached for a few seconds instead of costing a database read per image frame.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.accounts.dependencies import SCOPE_REFUSALS
from sidecar.accounts.login import authenticate
from sidecar.accounts.models import Role, TokenScope, User
from sidecar.accounts.security import InvalidToken, decode_access_token
from sidecar.core import audit
from sidecar.core.errors import NotAuthenticated, NotPermitted
from sidecar.core.settings import Settings
from sidecar.studies.models import Study
from sidecar.viewer.paths import UID

SESSION_COOKIE = "viewer_session"
VIEWER_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.PHYSICIAN})
# How long a disabled account or a changed password may go unnoticed by the proxy.
ACCOUNT_CHECK_SECONDS = 10.0
# One audit event per user and study in this window: a study opened once is hundreds of frame
# requests, and the trail must say who looked at what, not count frames.
VIEW_AUDIT_WINDOW_SECONDS = 3600.0

# A DICOMweb path naming a study (QIDO series of a study, WADO-RS metadata, frames, rendered);
# the fronts pass on only paths sidecar.viewer.paths allows, whose UIDs are this UID.
_STUDY_IN_PATH = re.compile(rf"^/?(?:dicom-web/)?studies/({UID})(?:/|$)")


@dataclass(frozen=True)
class Viewer:
    user_id: int
    username: str
    role: Role


@dataclass(frozen=True)
class _Account:
    active: bool
    credentials_changed_at: datetime | None
    checked_at: float


def credential_of(authorization: str | None, cookie: str | None) -> str | None:
    """The bearer token if one is sent, else the session cookie."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return cookie or None


def study_in_path(path: str) -> str | None:
    match = _STUDY_IN_PATH.match(path)
    return match.group(1) if match else None


class ViewerAccess:
    def __init__(
        self, engine: Engine, jwt_secret: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._secret = jwt_secret
        self._clock = clock
        self._accounts: dict[int, _Account] = {}
        self._viewed: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()
        # Study Instance UIDs Orthanc holds under several patient ids, and when last read.
        self._quarantined: frozenset[str] = frozenset()
        self._quarantine_read_at: float | None = None

    def authenticate(self, credential: str | None) -> Viewer:
        """Raises NotAuthenticated (401) or NotPermitted (403). May read the database: call
        it off the event loop."""
        viewer = self._check(credential, may_read_database=True)
        assert viewer is not None  # with the database at hand there is always an answer
        return viewer

    def log_in(
        self,
        settings: Settings,
        username: str,
        password: str,
        totp_code: str | None,
        address: str,
        now: datetime,
    ) -> User:
        """The account these credentials open (the viewer's login form), by the API's rules;
        raises as sidecar.accounts.login.authenticate does. Hashes a password: call it off the
        event loop."""
        with Session(self._engine, expire_on_commit=False) as session:
            return authenticate(
                session,
                settings,
                username=username,
                password=password,
                totp_code=totp_code,
                address=address,
                now=now,
                channel="viewer",
            )

    def authenticate_from_memory(self, credential: str | None) -> Viewer | None:
        """As authenticate(), but None when the account must be read from the database first
        (the common, per-frame case answers from memory, on the event loop)."""
        return self._check(credential, may_read_database=False)

    def _check(self, credential: str | None, *, may_read_database: bool) -> Viewer | None:
        if not credential:
            raise NotAuthenticated("log in to view images")
        try:
            claims = decode_access_token(credential, self._secret)
        except InvalidToken as exc:
            raise NotAuthenticated("the session is invalid or expired: log in again") from exc
        account = self._cached_account(claims.user_id)
        if account is None:
            if not may_read_database:
                return None
            account = self._read_account(claims.user_id)
        if not account.active:
            raise NotAuthenticated("the account is disabled or no longer exists")
        if account.credentials_changed_at and claims.issued_at < account.credentials_changed_at:
            raise NotAuthenticated("the password or role changed: log in again")
        if claims.scope is not TokenScope.FULL:
            raise NotPermitted(SCOPE_REFUSALS[claims.scope])
        if claims.role not in VIEWER_ROLES:
            raise NotPermitted("this account's role may not view images")
        return Viewer(claims.user_id, claims.username, claims.role)

    def study_to_audit(self, viewer: Viewer, dicomweb_path: str) -> str | None:
        """The StudyInstanceUID in `dicomweb_path` when this is the viewer's first request for
        it in the window (then pass it to record_view), else None. Memory only."""
        uid = study_in_path(dicomweb_path)
        return uid if uid is not None and self.first_view(viewer, uid) else None

    def record_view(self, viewer: Viewer, uid: str) -> None:
        """Audits that `viewer` opened the study. The study is named by its sidecar id when
        registered, else by its StudyInstanceUID (an identifier, not patient data)."""
        with Session(self._engine) as session:
            study_id = session.exec(select(Study.id).where(Study.study_instance_uid == uid)).first()
            audit.record(
                session,
                actor=viewer.username,
                action="study.viewed",
                entity_type="study" if study_id is not None else "dicom_study",
                entity_id=study_id if study_id is not None else uid,
                role=viewer.role,
            )
            session.commit()

    def quarantined_from_memory(self, uid: str) -> bool | None:
        """Whether the study is kept from the viewer (its UID is held under several patient
        ids: the viewer would mix them); None when the list must be read again first."""
        read_at = self._quarantine_read_at
        if read_at is None or self._clock() - read_at > ACCOUNT_CHECK_SECONDS:
            return None
        return uid in self._quarantined

    def quarantined(self, uid: str) -> bool:
        """As quarantined_from_memory, reading the list from the database when it is due."""
        known = self.quarantined_from_memory(uid)
        if known is not None:
            return known
        with Session(self._engine) as session:
            uids = session.exec(
                select(Study.study_instance_uid).where(
                    col(Study.conflicting_patient_ids).is_not(None)
                )
            ).all()
        self._quarantined, self._quarantine_read_at = frozenset(uids), self._clock()
        return uid in self._quarantined

    def first_view(self, viewer: Viewer, uid: str) -> bool:
        now = self._clock()
        key = (viewer.user_id, uid)
        with self._lock:
            last = self._viewed.get(key)
            if last is not None and now - last < VIEW_AUDIT_WINDOW_SECONDS:
                return False
            self._viewed[key] = now
            if len(self._viewed) > 100_000:  # bounded memory; an expired entry only re-audits
                self._viewed = {k: t for k, t in self._viewed.items() if now - t < 60}
            return True

    def _cached_account(self, user_id: int) -> _Account | None:
        cached = self._accounts.get(user_id)
        if cached is not None and self._clock() - cached.checked_at <= ACCOUNT_CHECK_SECONDS:
            return cached
        return None

    def _read_account(self, user_id: int) -> _Account:
        with Session(self._engine) as session:
            user = session.get(User, user_id)
            account = _Account(
                active=user is not None and user.is_active,
                credentials_changed_at=user.credentials_changed_at if user else None,
                checked_at=self._clock(),
            )
        self._accounts[user_id] = account
        return account
