"""Orthanc entry script ("PythonScript"): forward StableStudy events to the sidecar.

The only module that imports ``orthanc``; the logic lives in ``stable_study_notifier``, imported
plainly because Orthanc puts this script's directory on ``sys.path``. Runs on Orthanc's embedded
Python 3.11.
"""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests

import stable_study_notifier

if TYPE_CHECKING:
    # The real module exists only inside Orthanc. A type checker run from the repo root would
    # resolve `orthanc` to the configuration folder orthanc/ instead, so it is typed as Any.
    orthanc: Any
else:
    import orthanc


def _register(environ: Mapping[str, str]) -> None:
    try:
        config = stable_study_notifier.config_from_env(environ)
    except stable_study_notifier.ConfigError as exc:
        orthanc.LogError(
            f"sidecar bridge DISABLED, no change callback registered: {exc}. "
            "The sidecar gets no stable-study notifications until this is fixed."
        )
        return
    session = requests.Session()
    # The sidecar is a fixed peer: proxy variables must not reroute it, and a ~/.netrc entry
    # must not replace the bearer header (requests applies both when trust_env is on).
    session.trust_env = False
    notifier = stable_study_notifier.SidecarNotifier(
        config.sidecar_url,
        config.token,
        session,
        timeout=config.timeout,
        log=orthanc.LogWarning,
    )
    handler = stable_study_notifier.ChangeHandler(
        notifier.notify_stable_study,
        stable_study=orthanc.ChangeType.STABLE_STUDY,
        orthanc_stopped=orthanc.ChangeType.ORTHANC_STOPPED,
    )
    orthanc.RegisterOnChangeCallback(handler)
    orthanc.LogInfo(
        f"sidecar bridge: stable studies are posted to {config.sidecar_url} "
        f"(timeout {config.timeout_seconds} s)"
    )


_register(os.environ)
