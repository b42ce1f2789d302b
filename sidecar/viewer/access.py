"""Who may look at images through the viewer front, and the record of who opened which study.

A viewer user presents the same access token the API issues, either as a bearer token or in the
`viewer_session` cookie that the login page sets (HttpOnly, so page scripts cannot read it;
SameSite=Strict, so no other site can make the browser send it). Clinicians may view: admin,
radiologist, technologist, physician, the roles that read studies through the API. The
integration role is a machine account and may not. An analyzer account (a machine too) reads
over DICOMweb, with its bearer token, the studies of the work items it holds and nothing else
(sidecar.access.care_scope): no viewer page, no login form.

Every proxied request is checked, so the account lookup that catches a disabled user or a changed
password is cached for a few seconds instead of costing a database read per image frame. So is
a physician's care relationship with each study they open (sidecar.access.care_scope): their
viewer shows the studies of the patients they care for, and answers for any other as for a study
that does not exist.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.access.care_scope import CareScope, reach_limited
from sidecar.accounts.dependencies import SCOPE_REFUSALS
from sidecar.accounts.login import authenticate
from sidecar.accounts.models import Role, TokenScope, User
from sidecar.accounts.security import InvalidToken, decode_access_token
from sidecar.core import audit
from sidecar.core.errors import NotAuthenticated, NotPermitted
from sidecar.core.models import utcnow
from sidecar.core.settings import Settings
from sidecar.studies.models import Study

SESSION_COOKIE = "viewer_session"
VIEWER_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.PHYSICIAN})
#: Who reads images over DICOMweb: the viewer's users, and analyzers (their held studies only).
DICOMWEB_ROLES = VIEWER_ROLES | {Role.ANALYZER}
# How long a disabled account or a changed password may go unnoticed by the proxy.
ACCOUNT_CHECK_SECONDS = 10.0
# One audit event per user and study in this window: a study opened once is hundreds of frame
# requests, and the trail must say who looked at what, not count frames.
VIEW_AUDIT_WINDOW_SECONDS = 3600.0


@dataclass(frozen=True)
class Viewer:
    user_id: int
    username: str
    role: Role
    # Some studies are out of reach: a physician's (care relationship), an analyzer's (the
    # studies of the work items it holds) or a user limited to facilities
    # (sidecar.access.care_scope).
    limited: bool = False

    @property
    def has_pages(self) -> bool:
        """Opens the viewer's pages; an analyzer reads DICOMweb only."""
        return self.role in VIEWER_ROLES


@dataclass(frozen=True)
class _Account:
    active: bool
    credentials_changed_at: datetime | None
    checked_at: float
    facility_limited: bool = False


def credential_of(authorization: str | None, cookie: str | None) -> str | None:
    """The bearer token if one is sent, else the session cookie."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return cookie or None


class ViewerAccess:
    def __init__(
        self,
        engine: Engine,
        jwt_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._secret = jwt_secret
        self._clock = clock  # for the caches
        self._now = now  # the time emergency accesses expire by (the app's clock)
        # (user id, StudyInstanceUID) -> when the study was last read to be in the user's care.
        # Only answers that allow are kept (an image's frames): a refusal is read again, so that
        # an emergency access opens the study at once.
        self._in_care: dict[tuple[int, str], float] = {}
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
        if claims.role not in DICOMWEB_ROLES:
            raise NotPermitted("this account's role may not view images")
        limited = reach_limited(claims.role) or account.facility_limited
        return Viewer(claims.user_id, claims.username, claims.role, limited)

    def studies_to_audit(self, viewer: Viewer, uids: Collection[str]) -> list[str]:
        """Those of the studies a request targets (sidecar.viewer.targets) that the viewer asks
        for the first time in the window: pass them to record_views. Memory only."""
        return [uid for uid in sorted(uids) if self.first_view(viewer, uid)]

    def record_views(self, viewer: Viewer, uids: Collection[str]) -> None:
        """Audits that `viewer` opened the studies. A study is named by its sidecar id when
        registered, else by its StudyInstanceUID (an identifier, not patient data)."""
        with Session(self._engine) as session:
            registered = dict(
                session.exec(
                    select(Study.study_instance_uid, Study.id).where(
                        col(Study.study_instance_uid).in_(uids)
                    )
                ).all()
            )
            for uid in uids:
                study_id = registered.get(uid)
                audit.record(
                    session,
                    actor=viewer.username,
                    action="study.viewed",
                    entity_type="study" if study_id is not None else "dicom_study",
                    entity_id=study_id if study_id is not None else uid,
                    role=viewer.role,
                )
            session.commit()

    def quarantined_from_memory(self, uids: Collection[str]) -> bool | None:
        """Whether any of the studies is kept from the viewer (its UID is held under several
        patient ids: the viewer would mix them); None when the list must be read again first."""
        read_at = self._quarantine_read_at
        if read_at is None or self._clock() - read_at > ACCOUNT_CHECK_SECONDS:
            return None
        return not self._quarantined.isdisjoint(uids)

    def quarantined(self, uids: Collection[str]) -> bool:
        """As quarantined_from_memory, reading the list from the database when it is due."""
        known = self.quarantined_from_memory(uids)
        if known is not None:
            return known
        with Session(self._engine) as session:
            quarantined = session.exec(
                select(Study.study_instance_uid).where(
                    col(Study.conflicting_patient_ids).is_not(None)
                )
            ).all()
        self._quarantined = frozenset(quarantined)
        self._quarantine_read_at = self._clock()
        return not self._quarantined.isdisjoint(uids)

    def out_of_care_from_memory(self, viewer: Viewer, uids: Collection[str]) -> bool | None:
        """Whether one of the studies is out of the viewer's reach: not of a patient they care
        for, or of a facility they are not limited to (always False for users who read the whole
        department); None when that must be read first."""
        if not viewer.limited:
            return False
        now = self._clock()
        for uid in uids:
            read_at = self._in_care.get((viewer.user_id, uid))
            if read_at is None or now - read_at > ACCOUNT_CHECK_SECONDS:
                return None
        return False

    def out_of_care(self, viewer: Viewer, uids: Collection[str]) -> bool:
        """As out_of_care_from_memory, reading the care relationship from the database. A study
        the sidecar has not registered is in no one's care (its patient is not known yet)."""
        known = self.out_of_care_from_memory(viewer, uids)
        if known is not None:
            return known
        with Session(self._engine) as session:
            user = session.get(User, viewer.user_id)
            if user is None:
                return True
            scope = CareScope(user, self._now())
            in_care = set(
                session.exec(
                    select(Study.study_instance_uid).where(
                        col(Study.study_instance_uid).in_(uids), *scope.studies()
                    )
                ).all()
            )
        read_at = self._clock()
        with self._lock:
            if len(self._in_care) > 100_000:  # bounded memory; a dropped entry is read again
                self._in_care.clear()
            for uid in in_care:
                self._in_care[(viewer.user_id, uid)] = read_at
        return not in_care.issuperset(uids)

    def forget(self, user_id: int) -> None:
        """Drops what is kept of the user's reach: an analyzer's work item ended, its study is
        asked again at its next request."""
        with self._lock:
            for key in [key for key in self._in_care if key[0] == user_id]:
                del self._in_care[key]

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
                facility_limited=bool(user and user.facilities),
            )
        self._accounts[user_id] = account
        return account
