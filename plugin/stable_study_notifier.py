"""Tell the sidecar that an Orthanc study became stable, or that Orthanc deleted a study, a series
or an instance.

Pure logic, free of the ``orthanc`` module so it can be tested on any Python: the entry script
(``sidecar_bridge.py``) injects the HTTP session, the logger and Orthanc's change-type values.

It runs on Orthanc's embedded Python (Debian's 3.11): stdlib only (the ``requests`` session comes
from the caller), no syntax newer than 3.11.

A stable-study notification is best effort: one POST, no retry. The sidecar reconciles from
Orthanc's durable ``/changes`` log, so a lost notification only delays a study; a retry loop here
would instead stall every later change event (the plugin runs change callbacks one at a time on a
single thread) and can hold up Orthanc's shutdown. Deletions are many (one event per instance) and
never in /changes: the callback only queues them (``deletion_queue``), a sender thread posts them
in batches and retries; the sidecar's periodic reconciliation (sidecar.ingest.deletion_watch)
catches whole studies whose notices were lost anyway.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_SIDECAR_URL = "http://127.0.0.1:3006"
DEFAULT_TIMEOUT_SECONDS = 3.0
# A sidecar that is up accepts at once; a longer connect wait only delays the change thread.
CONNECT_TIMEOUT_SECONDS = 1.0
STABLE_STUDIES_PATH = "/api/orthanc/stable-studies"
DELETIONS_PATH = "/api/orthanc/deletions"


class ConfigError(ValueError):
    """The environment does not allow the bridge to start; the message says what to fix."""


@dataclass(frozen=True)
class BridgeConfig:
    sidecar_url: str
    token: str = field(repr=False)  # a shared secret must not leak through a logged repr
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeouts for ``requests``."""
        return (min(CONNECT_TIMEOUT_SECONDS, self.timeout_seconds), self.timeout_seconds)


def config_from_env(environ: Mapping[str, str]) -> BridgeConfig:
    """Read ``SIDECAR_URL``, ``SIDECAR_PLUGIN_TOKEN`` (or ``SIDECAR_PLUGIN_TOKEN_FILE``, a file
    holding it, as the sidecar's settings accept) and ``SIDECAR_NOTIFY_TIMEOUT``.

    Raises ConfigError rather than guessing: a bridge posting without a token, or with a mistyped
    timeout, would fail on every study while looking configured.
    """
    url = environ.get("SIDECAR_URL", "").strip() or DEFAULT_SIDECAR_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"SIDECAR_URL must start with http:// or https://, got {url!r}")
    token = _token(environ)
    if not token:
        raise ConfigError("SIDECAR_PLUGIN_TOKEN is empty or unset")
    raw_timeout = environ.get("SIDECAR_NOTIFY_TIMEOUT", "").strip()
    timeout = DEFAULT_TIMEOUT_SECONDS
    if raw_timeout:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(
                f"SIDECAR_NOTIFY_TIMEOUT must be a positive number of seconds, got {raw_timeout!r}"
            )
    return BridgeConfig(sidecar_url=url.rstrip("/"), token=token, timeout_seconds=timeout)


def _token(environ: Mapping[str, str]) -> str:
    """The token from the environment or from the file SIDECAR_PLUGIN_TOKEN_FILE names (a
    Docker secret), never both; messages name the file, never the value."""
    token = environ.get("SIDECAR_PLUGIN_TOKEN", "").strip()
    path = environ.get("SIDECAR_PLUGIN_TOKEN_FILE", "").strip()
    if not path:
        return token
    if token:
        raise ConfigError("SIDECAR_PLUGIN_TOKEN and SIDECAR_PLUGIN_TOKEN_FILE are both set")
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"SIDECAR_PLUGIN_TOKEN_FILE: cannot read {path}") from None
    if not token:
        raise ConfigError(f"SIDECAR_PLUGIN_TOKEN_FILE: {path} is empty")
    return token


class HttpResponse(Protocol):
    @property
    def status_code(self) -> int: ...

    def close(self) -> None: ...


class HttpSession(Protocol):
    """The slice of ``requests.Session`` the notifier uses; tests pass a recording fake."""

    def post(
        self,
        url: str,
        *,
        json: Any,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
        allow_redirects: bool,
    ) -> HttpResponse: ...


class SidecarNotifier:
    def __init__(
        self,
        url: str,
        token: str,
        session: HttpSession,
        *,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS),
        log: Callable[[str], None],
    ) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._timeout = timeout
        self._log = log

    def notify_stable_study(self, orthanc_study_id: str) -> bool:
        """POST the study id once; True on 2xx. Logs one warning and returns False otherwise."""
        return self._post(
            STABLE_STUDIES_PATH,
            {"orthancStudyId": orthanc_study_id},
            f"stable study {orthanc_study_id}",
            "it will catch up from /changes",
        )

    def send_deletions(self, deletions: list[tuple[str, str]]) -> str | None:
        """POST a batch of deletions ``(resource type, Orthanc id)`` once, without logging: the
        deletion queue retries and warns once per outage. None on 2xx, else the failure."""
        body = {"deletions": [{"resourceType": t, "orthancId": i} for t, i in deletions]}
        return self._send(DELETIONS_PATH, body)

    def _post(self, path: str, body: Mapping[str, str], what: str, fallback: str) -> bool:
        """Never raises; one warning on failure, naming the Orthanc id and the failure kind
        only, never patient data."""
        failure = self._send(path, body)
        if failure is None:
            return True
        self._log(f"sidecar not notified of {what}: {failure} ({fallback})")
        return False

    def _send(self, path: str, body: Mapping[str, Any]) -> str | None:
        """Never raises (an exception would only become a traceback in Orthanc's log): None on
        2xx, else "HTTP <status>" or the exception's class name."""
        try:
            # A redirect means a misconfigured URL; following it would turn the POST into a GET.
            response = self._session.post(
                self._url + path,
                json=dict(body),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
            status = response.status_code
            response.close()
        except Exception as exc:  # any failure, including a bug in a session, is one failure
            return type(exc).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"


class ChangeHandler:
    """The OnChange callback: forwards StableStudy events, queues the deletion of studies,
    series and instances, goes quiet once Orthanc stops.

    The change-type and resource-type values are injected so this module never imports
    ``orthanc``. After ORTHANC_STOPPED every event is dropped and ``on_stopped`` ends the
    deletion sender, so shutdown never waits on HTTP. ``queue_deleted`` must not do I/O: it runs
    on Orthanc's only change thread. Deletions of other levels (a patient) are not forwarded:
    Orthanc reports each study, series and instance it removes with them, one event each.
    """

    def __init__(
        self,
        notify: Callable[[str], bool],
        *,
        stable_study: object,
        orthanc_stopped: object,
        queue_deleted: Callable[[str, str], None] | None = None,
        deleted: object = None,
        deleted_levels: Mapping[object, str] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self._notify = notify
        self._stable_study = stable_study
        self._orthanc_stopped = orthanc_stopped
        self._queue_deleted = queue_deleted
        self._deleted = deleted
        # Orthanc's resource type -> the name the sidecar takes ("Study", "Series", "Instance").
        self._deleted_levels = dict(deleted_levels or {})
        self._on_stopped = on_stopped
        self._stopped = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __call__(self, change_type: object, level: object, resource_id: str) -> None:
        if self._stopped:
            return
        if change_type == self._stable_study:
            self._notify(resource_id)
        elif change_type == self._deleted and self._queue_deleted is not None:
            level_name = self._deleted_levels.get(level)
            if level_name is not None:
                self._queue_deleted(level_name, resource_id)
        elif change_type == self._orthanc_stopped:
            self._stopped = True
            if self._on_stopped is not None:
                self._on_stopped()
