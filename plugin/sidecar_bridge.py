"""Orthanc entry script ("PythonScript"): forward StableStudy events and the deletion of studies,
series and instances to the sidecar (deletions queued, then posted in batches by a sender thread),
and answer worklist C-FINDs from the worklist directory when ``WORKLIST_DIR`` is set.

The only module that imports ``orthanc``; the logic lives in ``stable_study_notifier``,
``deletion_queue`` and ``worklist_cache``, imported plainly because Orthanc puts this script's
directory on ``sys.path``. Runs on Orthanc's embedded Python 3.11.
"""

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests

import deletion_queue
import stable_study_notifier
import worklist_cache

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
    # The sender thread gets its own session: requests.Session is not meant to be shared
    # between threads, and the change thread keeps posting stable studies.
    deletion_session = requests.Session()
    deletion_session.trust_env = False
    deletions = deletion_queue.DeletionQueue(
        stable_study_notifier.SidecarNotifier(
            config.sidecar_url,
            config.token,
            deletion_session,
            timeout=config.timeout,
            log=orthanc.LogWarning,
        ).send_deletions,
        log=orthanc.LogWarning,
        info=orthanc.LogInfo,
    )
    deletions.start()
    handler = stable_study_notifier.ChangeHandler(
        notifier.notify_stable_study,
        stable_study=orthanc.ChangeType.STABLE_STUDY,
        orthanc_stopped=orthanc.ChangeType.ORTHANC_STOPPED,
        queue_deleted=deletions.put,
        deleted=orthanc.ChangeType.DELETED,
        deleted_levels={
            orthanc.ResourceType.STUDY: "Study",
            orthanc.ResourceType.SERIES: "Series",
            orthanc.ResourceType.INSTANCE: "Instance",
        },
        on_stopped=deletions.stop,
    )
    orthanc.RegisterOnChangeCallback(handler)
    orthanc.LogInfo(
        f"sidecar bridge: stable studies and deletions are posted to {config.sidecar_url} "
        f"(timeout {config.timeout_seconds} s)"
    )


def _worklist_query_json(query: Any) -> Any:
    dicom = query.WorklistGetDicomQuery()
    return json.loads(
        orthanc.DicomBufferToJson(
            dicom, orthanc.DicomToJsonFormat.SHORT, orthanc.DicomToJsonFlags.NONE, 0
        )
    )


def _register_worklist(environ: Mapping[str, str]) -> None:
    # Independent of the sidecar settings above: the worklist must answer with no sidecar at all.
    # Unset means no worklist callback: Orthanc allows one worklist handler in total, and the
    # ModalityWorklists plugin may be the one configured.
    directory = environ.get("WORKLIST_DIR", "").strip()
    if not directory:
        return
    cache = worklist_cache.WorklistCache(directory, log=orthanc.LogWarning)
    cache.refresh()  # now, so the first C-FIND does not pay for reading every file
    handler = worklist_cache.WorklistHandler(
        cache, query_json=_worklist_query_json, log=orthanc.LogWarning
    )
    orthanc.RegisterWorklistCallback(handler)
    orthanc.LogInfo(f"worklist: C-FIND answered from {directory} ({len(cache)} items)")


_register(os.environ)
_register_worklist(os.environ)
