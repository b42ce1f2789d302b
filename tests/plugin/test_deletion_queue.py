"""Deletion notices leave Orthanc's change thread: the callback only queues them, a sender thread
posts them in batches and retries. Real HTTP on loopback (sidecar_stub), real threads; waits are
polls with a deadline."""

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import stable_study_notifier as ssn
from deletion_queue import Deletion, DeletionQueue
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.launcher.orthanc import OrthancLayout, OrthancProcess

import fake_orthanc  # also puts plugin/ on sys.path
from dicom_factory import make_study
from fake_orthanc import ChangeType, FakeOrthanc, ResourceType
from sidecar_stub import ReceivedPost, SidecarStub
from stack import free_port

TOKEN = "plugin-secret"
STUDY_ID = "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715"
SERIES_ID = "9d3a6e1c-1b2c3d4e-5f607182-93a4b5c6-d7e8f901"
INSTANCE_ID = "0a1b2c3d-4e5f6071-8293a4b5-c6d7e8f9-01234567"
LEVELS: dict[object, str] = {
    ResourceType.STUDY: "Study",
    ResourceType.SERIES: "Series",
    ResourceType.INSTANCE: "Instance",
}


def instance_id(n: int) -> str:
    return f"{n:08x}-4e5f6071-8293a4b5-c6d7e8f9-01234567"


def until(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline} s: {what}")
        time.sleep(0.005)  # a poll interval, not a wait for an outcome


def bridge_env(url: str, **extra: str) -> dict[str, str]:
    return {"SIDECAR_URL": url, "SIDECAR_PLUGIN_TOKEN": TOKEN, **extra}


def deleted_items(posts: list[ReceivedPost]) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    for post in posts:
        assert post.path == "/api/orthanc/deletions"
        assert post.headers["Authorization"] == f"Bearer {TOKEN}"
        items += json.loads(post.body)["deletions"]
    return items


class Posts:
    """Every POST the stub has received so far, in order."""

    def __init__(self, stub: SidecarStub, *already: ReceivedPost) -> None:
        self._stub = stub
        self.all = list(already)

    def poll(self) -> list[ReceivedPost]:
        while not self._stub.received.empty():
            self.all.append(self._stub.received.get_nowait())
        return self.all


def test_the_handler_only_queues_deletions_of_studies_series_and_instances() -> None:
    queued: list[Deletion] = []
    stopped: list[bool] = []
    handler = ssn.ChangeHandler(
        lambda _: pytest.fail("no stable study here"),
        stable_study=ChangeType.STABLE_STUDY,
        orthanc_stopped=ChangeType.ORTHANC_STOPPED,
        queue_deleted=lambda level, orthanc_id: queued.append((level, orthanc_id)),
        deleted=ChangeType.DELETED,
        deleted_levels=LEVELS,
        on_stopped=lambda: stopped.append(True),
    )
    handler(int(ChangeType.DELETED), int(ResourceType.INSTANCE), INSTANCE_ID)
    handler(int(ChangeType.DELETED), int(ResourceType.SERIES), SERIES_ID)
    handler(int(ChangeType.DELETED), int(ResourceType.STUDY), STUDY_ID)
    # A patient's deletion comes with one event per study, series and instance: not forwarded.
    handler(int(ChangeType.DELETED), int(ResourceType.PATIENT), "patient-id")
    handler(int(ChangeType.ORTHANC_STOPPED), int(ResourceType.NONE), "")
    handler(int(ChangeType.DELETED), int(ResourceType.STUDY), "after-stop")
    handler(int(ChangeType.ORTHANC_STOPPED), int(ResourceType.NONE), "")

    assert queued == [("Instance", INSTANCE_ID), ("Series", SERIES_ID), ("Study", STUDY_ID)]
    assert stopped == [True]  # the sender is told once


def test_callbacks_never_wait_on_an_unreachable_sidecar() -> None:
    # Listening but never accepting: the sender's POST hangs for the whole read timeout (60 s).
    # Were a callback to post itself, 2,000 of them would take hours.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        fake = FakeOrthanc()
        fake_orthanc.load_bridge(
            fake,
            bridge_env(f"http://127.0.0.1:{silent.getsockname()[1]}", SIDECAR_NOTIFY_TIMEOUT="60"),
        )
        assert fake.change_callback is not None

        def delete_a_big_study() -> None:
            for n in range(2000):
                fake.on_change(ChangeType.DELETED, ResourceType.INSTANCE, instance_id(n))
            fake.on_change(ChangeType.DELETED, ResourceType.STUDY, STUDY_ID)

        change_thread = threading.Thread(target=delete_a_big_study, daemon=True)
        change_thread.start()
        until(lambda: not change_thread.is_alive(), "2,001 deletion events handled")
        fake.on_change(ChangeType.ORTHANC_STOPPED, ResourceType.NONE, "")
    assert fake.messages("warning") == []  # nothing failed yet: the POST is still pending


def test_many_deletions_arrive_in_a_few_batches_in_order(sidecar: SidecarStub) -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env(sidecar.url))
    sidecar.answering.clear()  # the first POST is held while the rest is deleted

    fake.on_change(ChangeType.DELETED, ResourceType.INSTANCE, instance_id(0))
    first = sidecar.next_post()
    for n in range(1, 1200):
        fake.on_change(ChangeType.DELETED, ResourceType.INSTANCE, instance_id(n))
    fake.on_change(ChangeType.DELETED, ResourceType.SERIES, SERIES_ID)
    sidecar.answering.set()
    fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)  # its own path

    seen = Posts(sidecar, first)
    until(lambda: len([p for p in seen.poll() if "deletions" in p.path]) == 4, "4 batches")
    posts = seen.all
    stable = [p for p in posts if p.path == "/api/orthanc/stable-studies"]
    assert [json.loads(p.body) for p in stable] == [{"orthancStudyId": STUDY_ID}]
    batches = [p for p in posts if p not in stable]
    # 1 + 500 + 500 + 200: the held one, then everything queued behind it, 500 at most a POST.
    assert [len(json.loads(p.body)["deletions"]) for p in batches] == [1, 500, 500, 200]
    assert deleted_items(batches) == [
        *({"resourceType": "Instance", "orthancId": instance_id(n)} for n in range(1200)),
        {"resourceType": "Series", "orthancId": SERIES_ID},
    ]
    assert fake.messages("warning") == []


@pytest.fixture
def queue_to(sidecar: SidecarStub) -> Iterator[tuple[DeletionQueue, list[str], list[str]]]:
    import requests

    warnings: list[str] = []
    infos: list[str] = []
    notifier = ssn.SidecarNotifier(sidecar.url, TOKEN, requests.Session(), log=warnings.append)
    queue = DeletionQueue(
        notifier.send_deletions,
        log=warnings.append,
        info=infos.append,
        first_retry=0.01,
        max_retry=0.05,
    )
    queue.start()
    yield queue, warnings, infos
    queue.stop()
    assert queue.join(timeout=5)


def test_a_failed_batch_is_kept_retried_and_delivered_once_the_sidecar_answers(
    sidecar: SidecarStub, queue_to: tuple[DeletionQueue, list[str], list[str]]
) -> None:
    queue, warnings, infos = queue_to
    sidecar.status = 503
    queue.put("Study", STUDY_ID)
    queue.put("Series", SERIES_ID)
    seen = Posts(sidecar)
    until(lambda: len(seen.poll()) >= 4, "several tries")
    queue.put("Instance", INSTANCE_ID)  # joins the kept batch
    sidecar.status = 202
    until(lambda: any(p.status == 202 for p in seen.poll()), "a try the sidecar accepts")
    every = seen.all
    accepted = [p for p in every if p.status == 202]
    assert len(accepted) == 1
    assert deleted_items(accepted) == [
        {"resourceType": "Study", "orthancId": STUDY_ID},
        {"resourceType": "Series", "orthancId": SERIES_ID},
        {"resourceType": "Instance", "orthancId": INSTANCE_ID},
    ]
    # Every failed try carried the same items, oldest first.
    for failed in every[: every.index(accepted[0])]:
        assert deleted_items([failed])[:2] == deleted_items(accepted)[:2]
    assert len(warnings) == 1, warnings  # one per outage, not per try
    assert "HTTP 503" in warnings[0] and "2 deletions" in warnings[0]
    assert TOKEN not in warnings[0]
    until(lambda: len(infos) == 1, "the recovery is said once")
    assert "delivered again" in infos[0]
    assert len(queue) == 0


def test_a_full_queue_drops_the_oldest_with_one_warning() -> None:
    sent: list[list[Deletion]] = []
    release = threading.Event()

    def send(batch: list[Deletion]) -> str | None:
        sent.append(batch)
        release.wait(timeout=10)
        return None

    warnings: list[str] = []
    queue = DeletionQueue(send, log=warnings.append, capacity=3, batch_size=2)
    queue.start()
    queue.put("Instance", "a")
    until(lambda: len(sent) == 1, "the sender holds a")
    for orthanc_id in "bcdef":  # b and c are dropped
        queue.put("Instance", orthanc_id)
    assert len(queue) == 3
    assert len(warnings) == 1
    assert "dropping the oldest" in warnings[0] and "reconciliation" in warnings[0]
    release.set()

    until(lambda: sum(len(b) for b in sent) == 4, "what was kept is sent")
    assert [[i for _, i in batch] for batch in sent] == [["a"], ["d", "e"], ["f"]]
    queue.stop()
    assert queue.join(timeout=5)


def test_nothing_is_sent_after_orthanc_stopped(sidecar: SidecarStub) -> None:
    import requests

    notifier = ssn.SidecarNotifier(sidecar.url, TOKEN, requests.Session(), log=lambda _: None)
    queue = DeletionQueue(notifier.send_deletions, log=lambda _: None)
    handler = ssn.ChangeHandler(
        notifier.notify_stable_study,
        stable_study=ChangeType.STABLE_STUDY,
        orthanc_stopped=ChangeType.ORTHANC_STOPPED,
        queue_deleted=queue.put,
        deleted=ChangeType.DELETED,
        deleted_levels=LEVELS,
        on_stopped=queue.stop,
    )
    queue.start()
    sidecar.answering.clear()
    handler(int(ChangeType.DELETED), int(ResourceType.INSTANCE), instance_id(0))
    in_flight = sidecar.next_post()
    handler(int(ChangeType.DELETED), int(ResourceType.INSTANCE), instance_id(1))  # queued
    handler(int(ChangeType.ORTHANC_STOPPED), int(ResourceType.NONE), "")
    handler(int(ChangeType.DELETED), int(ResourceType.STUDY), STUDY_ID)  # after the stop
    sidecar.answering.set()

    assert queue.join(timeout=5)  # the sender ends once its POST in flight is answered
    assert deleted_items([in_flight]) == [{"resourceType": "Instance", "orthancId": instance_id(0)}]
    assert sidecar.received.empty()
    assert len(queue) == 0


def test_a_sender_that_raises_is_a_failure_not_the_end_of_the_thread() -> None:
    calls: list[list[Deletion]] = []

    def send(batch: list[Deletion]) -> str | None:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("a bug for PATIENT^NAME")
        return None

    warnings: list[str] = []
    queue = DeletionQueue(send, log=warnings.append, info=lambda _: None, first_retry=0.01)
    queue.start()
    queue.put("Study", STUDY_ID)
    until(lambda: len(calls) == 2, "the retry")
    assert calls == [[("Study", STUDY_ID)]] * 2
    assert len(warnings) == 1 and "RuntimeError" in warnings[0] and "PATIENT" not in warnings[0]
    queue.stop()
    assert queue.join(timeout=5)


def test_entry_script_batches_deletions_to_a_real_http_server(sidecar: SidecarStub) -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env(sidecar.url))
    assert any("deletion" in m for m in fake.messages("info"))
    fake.on_change(ChangeType.DELETED, ResourceType.INSTANCE, INSTANCE_ID)
    fake.on_change(ChangeType.DELETED, ResourceType.PATIENT, "patient-id")
    fake.on_change(ChangeType.DELETED, ResourceType.STUDY, STUDY_ID)
    seen = Posts(sidecar)
    until(lambda: len(deleted_items(seen.poll())) == 2, "both items")
    posts = seen.all
    assert deleted_items(posts) == [
        {"resourceType": "Instance", "orthancId": INSTANCE_ID},
        {"resourceType": "Study", "orthancId": STUDY_ID},  # nothing for the patient
    ]
    assert posts[0].headers["Content-Type"] == "application/json"
    fake.on_change(ChangeType.ORTHANC_STOPPED, ResourceType.NONE, "")
    assert fake.messages("warning") == []


@pytest.mark.orthanc
def test_a_real_orthanc_deletes_a_study_and_stops_cleanly_with_the_sidecar_unreachable(
    tmp_path: Path,
) -> None:
    # The sidecar's port completes the handshake and never answers: each POST waits out its read
    # timeout (3 s). Sent one per event on the change thread, the study's 41 deletion notices
    # would hold Orthanc's shutdown (the plugin drains its change queue first) for two minutes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        layout = OrthancLayout(
            work_dir=tmp_path / "orthanc",
            http_port=free_port(),
            dicom_port=free_port(),
            stable_age=3600,  # no StableStudy notice: those still post on the change thread
            sidecar_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            plugin_token=TOKEN,
        )
        orthanc = OrthancProcess(layout)
        orthanc.start()
        try:
            study = make_study(tmp_path / "dicom", series_count=2, instances_per_series=19)
            client = OrthancClient(orthanc.url, timeout=30)
            for path in study.files:
                client.store_instance(path.read_bytes())
            [orthanc_id] = client.studies_with_uid(study.study_instance_uid)
            client.delete_study(orthanc_id)
            assert not client.studies_with_uid(study.study_instance_uid)
            client.close()
        finally:
            orthanc.stop(timeout=20)  # SIGTERM, then a kill after 20 s
    log = orthanc.log_path.read_text(errors="replace")
    assert "sidecar_bridge.py" in log  # the plugin was loaded
    assert "Traceback" not in log
    # Only a clean exit logs this; a shutdown held past the 20 s is killed before it.
    assert "Orthanc has stopped" in log
    assert log.count("sidecar not notified") <= 1  # one warning per outage, never one per event
