"""OrthancSync against a fake Orthanc client and a real database, on an injected clock.

The worker thread is never started: tests call poll_changes, process_pending and sync_round, and
move time by hand, so nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from sidecar.ingest.models import ChangesCursor, PendingStudy
from sidecar.ingest.orthanc_client import OrthancUnavailable
from sidecar.ingest.sync import OrthancSync, RoundReport
from sidecar.studies.models import Image, Study

from builders import UID_ROOT, OrthancStudy, SeriesSpec, orthanc_id, orthanc_study, unstable
from builders import with_more_instances as grown
from fake_orthanc_rest import FakeOrthanc

INTERVAL = 5.0
START = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def orthanc() -> FakeOrthanc:
    return FakeOrthanc()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_sync(engine: Engine, orthanc: FakeOrthanc, clock: Clock) -> Callable[..., OrthancSync]:
    def make(**options: Any) -> OrthancSync:
        return OrthancSync(engine, orthanc, interval=INTERVAL, now=clock, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture
def sync(make_sync: Callable[..., OrthancSync]) -> OrthancSync:
    return make_sync()


def study(n: int, *, series: int = 2, instances: int = 2) -> OrthancStudy:
    uid = f"{UID_ROOT}.{n}"
    return orthanc_study(
        uid,
        accession_number=f"ACC{n:04d}",
        series=[
            SeriesSpec(uid=f"{uid}.{s}", number=s, instances=instances)
            for s in range(1, series + 1)
        ],
    )


def pending(engine: Engine) -> dict[str, PendingStudy]:
    with Session(engine) as session:
        rows = session.exec(select(PendingStudy)).all()
        for row in rows:
            session.expunge(row)
        return {row.orthanc_id: row for row in rows}


def registered(engine: Engine) -> dict[str, tuple[int, int]]:
    """StudyInstanceUID -> (series count, instance count) of every registered study."""
    with Session(engine) as session:
        return {
            s.study_instance_uid: (s.series_count, s.instance_count)
            for s in session.exec(select(Study))
        }


def image_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Image)).one()


def stored_cursor(engine: Engine) -> int | None:
    with Session(engine) as session:
        cursor = session.get(ChangesCursor, 1)
        return None if cursor is None else cursor.last_seq


def process(sync: OrthancSync) -> RoundReport:
    report = RoundReport()
    sync.process_pending(report)
    return report


# -- the change log ---------------------------------------------------------------------------


def test_cursor_advances_page_by_page_and_persists(
    engine: Engine, orthanc: FakeOrthanc, make_sync: Callable[..., OrthancSync]
) -> None:
    first, second = orthanc.store(study(1)), orthanc.store(study(2))
    orthanc.log("NewStudy", first.orthanc_id)
    orthanc.log("NewPatient", orthanc_id("patient"))
    orthanc.log("StableStudy", first.orthanc_id)
    orthanc.log("NewStudy", second.orthanc_id)
    orthanc.log("StableStudy", second.orthanc_id)

    queued = make_sync(page_size=2).poll_changes()

    assert orthanc.changes_since == [0, 2, 4]  # three pages: Done false, false, then true
    assert stored_cursor(engine) == 5
    assert queued == 4  # per page: {first}, {first, second}, {second}
    assert set(pending(engine)) == {first.orthanc_id, second.orthanc_id}
    assert all(row.source == "changes" for row in pending(engine).values())

    third = orthanc.store(study(3))
    orthanc.log("StableStudy", third.orthanc_id)
    restarted = make_sync(page_size=2)  # a new process on the same database

    assert restarted.poll_changes() == 1
    assert orthanc.changes_since[3:] == [5]
    assert stored_cursor(engine) == 6
    assert restarted.status.cursor == 6
    assert restarted.status.orthanc_last_seq == 6
    assert set(pending(engine)) == {s.orthanc_id for s in (first, second, third)}


def test_empty_change_log_keeps_the_cursor(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    assert sync.poll_changes() == 0
    assert orthanc.changes_since == [0]
    assert stored_cursor(engine) == 0
    assert pending(engine) == {}


def test_orthanc_down_while_polling_leaves_the_cursor_and_queue_alone(
    engine: Engine, orthanc: FakeOrthanc, make_sync: Callable[..., OrthancSync]
) -> None:
    first = orthanc.store(study(1))
    orthanc.log("StableStudy", first.orthanc_id)
    orthanc.log("NewSeries", first.series_json[0]["ID"])
    orthanc.fail["parent_study_of_series"] = OrthancUnavailable("timeout")

    sync = make_sync()
    report = sync.sync_round()

    assert report.queued_from_changes == 0
    assert sync.status.last_error == "timeout"
    assert stored_cursor(engine) in (None, 0)
    assert pending(engine) == {}

    del orthanc.fail["parent_study_of_series"]
    report = sync.sync_round()
    assert report.registered == [first.orthanc_id]
    assert sync.status.last_error is None
    assert stored_cursor(engine) == 2


@pytest.mark.parametrize("kind", ["NewStudy", "StableStudy"])
def test_study_changes_queue_the_study(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, kind: str
) -> None:
    target = orthanc.store(study(1))
    orthanc.log(kind, target.orthanc_id)

    sync.poll_changes()

    assert set(pending(engine)) == {target.orthanc_id}
    assert orthanc.calls["parent_study_of_instance"] == 0
    assert orthanc.calls["parent_study_of_series"] == 0


def test_new_series_queues_its_parent_study(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    orthanc.store(study(1))
    target = orthanc.store(study(2))
    orthanc.log("NewSeries", target.series_json[1]["ID"])

    sync.poll_changes()

    assert set(pending(engine)) == {target.orthanc_id}
    assert orthanc.calls["parent_study_of_series"] == 1


def test_new_instances_queue_their_study_with_one_lookup_per_study_per_page(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    # Late instances into existing series leave only NewInstance rows, interleaved here.
    a, b = orthanc.store(study(1, instances=3)), orthanc.store(study(2, instances=3))
    for a_instance, b_instance in zip(a.instance_ids(), b.instance_ids(), strict=True):
        orthanc.log("NewInstance", a_instance)
        orthanc.log("NewInstance", b_instance)

    sync.poll_changes()

    assert set(pending(engine)) == {a.orthanc_id, b.orthanc_id}
    assert orthanc.calls["parent_study_of_instance"] == 2


def test_new_instances_of_a_study_already_in_the_page_need_no_lookup(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    arriving = orthanc.store(study(1))
    orthanc.log_study_arrival(arriving)

    sync.poll_changes()

    assert set(pending(engine)) == {arriving.orthanc_id}
    assert orthanc.calls["parent_study_of_instance"] == 0
    assert orthanc.calls["parent_study_of_series"] == 2
    assert orthanc.calls["study_instance_ids"] == 1


def test_new_instance_lookup_is_per_page(
    engine: Engine, orthanc: FakeOrthanc, make_sync: Callable[..., OrthancSync]
) -> None:
    target = orthanc.store(study(1, series=1, instances=4))
    for instance_id in target.instance_ids():
        orthanc.log("NewInstance", instance_id)

    make_sync(page_size=2).poll_changes()

    assert set(pending(engine)) == {target.orthanc_id}
    assert orthanc.calls["parent_study_of_instance"] == 2  # once in each of the two pages


def test_changes_of_deleted_resources_are_skipped(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    kept, gone = orthanc.store(study(1)), orthanc.store(study(2))
    orthanc.log("NewSeries", gone.series_json[0]["ID"])
    orthanc.log("NewInstance", gone.instance_ids()[0])
    orthanc.log("NewInstance", kept.instance_ids()[0])
    orthanc.delete(gone)

    sync.poll_changes()

    assert set(pending(engine)) == {kept.orthanc_id}
    assert stored_cursor(engine) == 3


# -- the queue --------------------------------------------------------------------------------


def test_enqueueing_a_pending_study_again_keeps_one_row(
    engine: Engine, sync: OrthancSync, clock: Clock
) -> None:
    target = study(1)
    sync.enqueue([target.orthanc_id, target.orthanc_id], "plugin")
    clock.advance(1)
    sync.enqueue([target.orthanc_id], "changes")

    rows = pending(engine)
    assert list(rows) == [target.orthanc_id]
    assert rows[target.orthanc_id].source == "changes"
    assert rows[target.orthanc_id].queued_at == START + timedelta(seconds=1)


def test_a_new_notice_makes_a_backed_off_study_due_at_once(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = orthanc.store(study(1))
    sync.enqueue([target.orthanc_id], "plugin")
    orthanc.down = True
    process(sync)
    assert pending(engine)[target.orthanc_id].attempts == 1

    orthanc.down = False
    clock.advance(1)  # still inside the back-off
    sync.enqueue([target.orthanc_id], "plugin")

    assert process(sync).registered == [target.orthanc_id]
    assert pending(engine) == {}


# -- registration -----------------------------------------------------------------------------


def test_a_stable_study_is_registered_with_its_images_and_leaves_the_queue(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    target = orthanc.store(study(1, series=2, instances=3))
    orthanc.log_study_arrival(target)

    report = sync.sync_round()

    assert report.registered == [target.orthanc_id]
    assert registered(engine) == {target.uid: (2, 6)}
    assert image_count(engine) == 6
    assert pending(engine) == {}
    assert sync.status.registered == 1
    assert sync.status.last_poll_at == START


def test_an_unstable_study_stays_queued_and_is_checked_again_later(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = study(1)
    orthanc.store(unstable(target))
    sync.enqueue([target.orthanc_id], "plugin")

    report = process(sync)

    assert report.still_unstable == [target.orthanc_id]
    assert registered(engine) == {}
    row = pending(engine)[target.orthanc_id]
    assert row.next_attempt_at == START + timedelta(seconds=INTERVAL)
    assert (row.attempts, row.last_error) == (0, None)
    assert orthanc.calls["study_series"] == 0

    clock.advance(INTERVAL - 1)
    assert process(sync) == RoundReport()  # not due yet: Orthanc is not asked
    assert orthanc.calls["study"] == 1

    orthanc.store(target)  # stable now
    clock.advance(1)
    assert process(sync).registered == [target.orthanc_id]
    assert registered(engine) == {target.uid: (2, 4)}
    assert pending(engine) == {}


def test_a_study_orthanc_no_longer_has_is_dropped(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    kept = orthanc.store(study(1))
    gone = study(2)
    sync.enqueue([gone.orthanc_id], "plugin")
    sync.enqueue([kept.orthanc_id], "plugin")

    report = process(sync)

    assert report.dropped == [gone.orthanc_id]
    assert report.registered == [kept.orthanc_id]
    assert pending(engine) == {}
    assert registered(engine) == {kept.uid: (2, 4)}


def test_a_study_without_study_instance_uid_is_dropped(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    broken = orthanc.store(study(1))
    del broken.study_json["MainDicomTags"]["StudyInstanceUID"]
    sync.enqueue([broken.orthanc_id], "plugin")

    assert process(sync).dropped == [broken.orthanc_id]
    assert pending(engine) == {}
    assert registered(engine) == {}


def test_orthanc_down_keeps_the_study_with_exponential_back_off_and_stops_the_round(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    first, second = orthanc.store(study(1)), orthanc.store(study(2))
    sync.enqueue([first.orthanc_id], "plugin")
    clock.advance(1)
    sync.enqueue([second.orthanc_id], "plugin")
    clock.advance(1)
    orthanc.down = True

    report = process(sync)

    assert report.failed == [first.orthanc_id]
    assert orthanc.calls["study"] == 1  # the round stopped: the second was not tried
    rows = pending(engine)
    assert (rows[first.orthanc_id].attempts, rows[second.orthanc_id].attempts) == (1, 0)
    assert rows[first.orthanc_id].next_attempt_at == clock.now + timedelta(seconds=2)
    assert rows[first.orthanc_id].last_error == "study: ConnectError"
    assert sync.status.last_error == "study: ConnectError"

    # The second is still due: it is tried first next round, and fails the same way.
    process(sync)
    assert pending(engine)[second.orthanc_id].attempts == 1
    assert orthanc.calls["study"] == 2

    delays = []
    for attempts in (2, 3, 4):
        due = pending(engine)[first.orthanc_id].next_attempt_at
        clock.now = due - timedelta(microseconds=1)
        assert first.orthanc_id not in process(sync).failed  # not due yet
        clock.now = due
        assert process(sync).failed[0] == first.orthanc_id
        row = pending(engine)[first.orthanc_id]
        assert row.attempts == attempts
        delays.append((row.next_attempt_at - clock.now).total_seconds())
    assert delays == [4, 8, 16]

    orthanc.down = False
    clock.advance(16)
    report = process(sync)
    assert sorted(report.registered) == sorted([first.orthanc_id, second.orthanc_id])
    assert pending(engine) == {}


def test_back_off_is_capped(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = orthanc.store(study(1))
    sync.enqueue([target.orthanc_id], "plugin")
    orthanc.down = True
    for _ in range(12):
        clock.now = pending(engine)[target.orthanc_id].next_attempt_at
        process(sync)

    row = pending(engine)[target.orthanc_id]
    assert row.attempts == 12
    assert row.next_attempt_at - clock.now == timedelta(seconds=300)


def test_an_unexpected_error_keeps_the_study_and_the_round_goes_on(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    first, second = orthanc.store(study(1)), orthanc.store(study(2))
    sync.enqueue([first.orthanc_id], "plugin")
    clock.advance(1)
    sync.enqueue([second.orthanc_id], "plugin")
    orthanc.fail["study_series"] = RuntimeError("boom")

    report = process(sync)

    assert report.failed == [first.orthanc_id, second.orthanc_id]
    rows = pending(engine)
    assert {row.attempts for row in rows.values()} == {1}
    assert {row.last_error for row in rows.values()} == {"RuntimeError"}


def test_a_study_re_enqueued_while_registering_stays_queued(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = orthanc.store(study(1))
    sync.enqueue([target.orthanc_id], "changes")

    def late_notice(orthanc_id: str) -> None:
        # The plugin's StableStudy for late instances lands while this round registers.
        orthanc.before_study = None
        clock.advance(0.001)
        orthanc.store(grown(target, 0, 2))
        sync.enqueue([orthanc_id], "plugin")

    orthanc.before_study = late_notice
    clock.advance(1)

    report = process(sync)

    assert report.registered == [target.orthanc_id]
    row = pending(engine)[target.orthanc_id]
    assert (row.source, row.attempts) == ("plugin", 0)
    assert row.next_attempt_at <= clock.now  # due at once
    assert process(sync).registered == [target.orthanc_id]
    assert registered(engine) == {target.uid: (2, 6)}
    assert pending(engine) == {}


def test_a_study_re_enqueued_while_unstable_keeps_its_new_due_time(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = orthanc.store(unstable(study(1)))
    sync.enqueue([target.orthanc_id], "changes")

    def late_notice(orthanc_id: str) -> None:
        orthanc.before_study = None
        clock.advance(0.001)
        sync.enqueue([orthanc_id], "plugin")

    orthanc.before_study = late_notice

    assert process(sync).still_unstable == [target.orthanc_id]
    row = pending(engine)[target.orthanc_id]
    assert row.next_attempt_at == clock.now  # not pushed back by INTERVAL


def test_a_registered_study_with_known_instances_does_not_reread_their_tags(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    target = orthanc.store(study(1))
    sync.enqueue([target.orthanc_id], "plugin")
    process(sync)
    assert orthanc.calls["study_instances_tags"] == 1

    sync.enqueue([target.orthanc_id], "changes")
    report = process(sync)

    assert report.registered == [target.orthanc_id]
    assert orthanc.calls["study"] == 2
    assert orthanc.calls["study_instances_tags"] == 1
    assert image_count(engine) == 4


def test_late_instances_are_registered_into_the_same_study(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync
) -> None:
    target = orthanc.store(study(1))
    orthanc.log_study_arrival(target)
    sync.sync_round()

    later = orthanc.store(grown(target, 1, 3))
    for instance_id in later.series_json[1]["Instances"][-3:]:
        orthanc.log("NewInstance", instance_id)
    orthanc.log("StableStudy", later.orthanc_id)
    report = sync.sync_round()

    assert report.registered == [target.orthanc_id]
    assert registered(engine) == {target.uid: (2, 7)}
    assert image_count(engine) == 7
    assert orthanc.calls["study_instances_tags"] == 2
    assert orthanc.calls["parent_study_of_instance"] == 0


def test_images_failing_after_the_study_is_recorded_are_retried(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    target = orthanc.store(study(1))
    sync.enqueue([target.orthanc_id], "plugin")
    orthanc.fail["study_instances_tags"] = OrthancUnavailable("HTTP 503")

    assert process(sync).failed == [target.orthanc_id]
    assert registered(engine) == {target.uid: (2, 4)}  # phase 1 is visible at once
    assert image_count(engine) == 0

    del orthanc.fail["study_instances_tags"]
    clock.advance(2)
    assert process(sync).registered == [target.orthanc_id]
    assert image_count(engine) == 4


def test_sidecar_down_then_up_registers_every_study_once(
    engine: Engine, orthanc: FakeOrthanc, make_sync: Callable[..., OrthancSync]
) -> None:
    stored = [orthanc.store(study(n)) for n in (1, 2, 3)]
    for item in stored:
        orthanc.log_study_arrival(item)

    make_sync(page_size=4).sync_round()
    make_sync(page_size=4).sync_round()  # a restart finds nothing new

    assert registered(engine) == {item.uid: (2, 4) for item in stored}
    assert image_count(engine) == 12
    assert pending(engine) == {}


# -- registration never competes with ingest ---------------------------------------------------


def test_image_attributes_wait_while_another_study_is_still_arriving(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    done = orthanc.store(study(1))
    arriving = orthanc.store(unstable(study(2)))
    sync.enqueue([done.orthanc_id, arriving.orthanc_id], "plugin")

    report = process(sync)

    # The stable study is visible at once; reading every file's tags waits for a quiet moment.
    assert registered(engine) == {done.uid: (2, 4)}
    assert report.images_deferred == [done.orthanc_id]
    assert report.still_unstable == [arriving.orthanc_id]
    assert image_count(engine) == 0
    assert orthanc.calls["study_instances_tags"] == 0
    assert set(pending(engine)) == {done.orthanc_id, arriving.orthanc_id}

    orthanc.store(study(2))  # the second study has finished arriving
    clock.advance(INTERVAL + 1)
    report = process(sync)

    assert sorted(report.registered) == sorted([done.orthanc_id, arriving.orthanc_id])
    assert image_count(engine) == 8
    assert pending(engine) == {}


def test_image_attributes_wait_no_longer_than_the_bound(
    engine: Engine, orthanc: FakeOrthanc, sync: OrthancSync, clock: Clock
) -> None:
    from sidecar.ingest.sync import MAX_IMAGE_DEFERRAL

    done = orthanc.store(study(1))
    arriving = orthanc.store(unstable(study(2)))
    sync.enqueue([done.orthanc_id, arriving.orthanc_id], "plugin")
    assert process(sync).images_deferred == [done.orthanc_id]

    # A department that never stops sending: the images are read after the bound anyway.
    clock.advance(MAX_IMAGE_DEFERRAL.total_seconds() + 1)
    report = process(sync)

    assert report.registered == [done.orthanc_id]
    assert report.still_unstable == [arriving.orthanc_id]
    assert image_count(engine) == 4


# -- one Study Instance UID, two patients ---------------------------------------------------


def test_a_uid_under_a_second_patient_id_is_flagged_never_merged(
    sync: OrthancSync, orthanc: FakeOrthanc, engine: Engine
) -> None:
    first = orthanc.store(study(40, series=1, instances=2))
    sync.enqueue([first.orthanc_id], "plugin")
    assert sync.sync_round().registered == [first.orthanc_id]
    # The same UID (and series) filed by Orthanc under another patient id: another study.
    second = orthanc_study(
        first.uid,
        patient_id="PAT-9999",
        series=[SeriesSpec(uid=f"{first.uid}.1", instances=3)],
    )
    assert second.orthanc_id != first.orthanc_id
    orthanc.store(second)
    sync.enqueue([second.orthanc_id], "plugin")
    assert sync.sync_round().registered == [second.orthanc_id]

    with Session(engine) as session:
        [row] = session.exec(select(Study)).all()
        assert (row.orthanc_id, row.patient_id, row.instance_count) == (
            first.orthanc_id,
            "PAT-0001",
            2,
        )
        assert row.conflicting_patient_ids == "PAT-9999"
        assert session.exec(select(func.count()).select_from(Image)).one() == 2

    # The row's own study registered again still sees the other one.
    sync.enqueue([first.orthanc_id], "changes")
    sync.sync_round()
    with Session(engine) as session:
        assert session.exec(select(Study.conflicting_patient_ids)).one() == "PAT-9999"

    # Resolved in Orthanc (the misfiled images deleted): cleared at the next registration.
    orthanc.delete(second)
    sync.enqueue([first.orthanc_id], "changes")
    sync.sync_round()
    with Session(engine) as session:
        assert session.exec(select(Study.conflicting_patient_ids)).one() is None
