"""The job state machine as a table (offload_runtime.transitions), and the shard layout."""

import pytest
from redis.crc import key_slot

from offload_contracts import EventKind, JobStatus
from offload_runtime import stream_cursor
from offload_runtime.keys import RedisKeys, shard_of
from offload_runtime.transitions import NONE, TRANSITIONS, Expiry, Transition, Unstarted

LIVE = {JobStatus.WAITING.value, JobStatus.DELAYED.value, JobStatus.ACTIVE.value}


def test_a_start_of_attempt_n_finds_the_job_as_attempt_n_minus_one_left_it() -> None:
    assert TRANSITIONS["start"].allowed(3) == "waiting:2|delayed:2"
    # A redelivery may also take over a job its dead worker left active or delayed.
    assert TRANSITIONS["take_over"].allowed(3) == "waiting:2|delayed:2|active:3|delayed:3"
    assert TRANSITIONS["cancel"].allowed(3) == "waiting:*|delayed:*|active:*"
    assert TRANSITIONS["create"].allowed(0) == "none:*"


def test_only_a_replay_leaves_a_finished_job() -> None:
    leaving_finished = {
        row.name
        for row in TRANSITIONS.values()
        for status, _ in row.sources
        if status not in LIVE | {NONE}
    }
    assert leaving_finished == {"replay"}
    assert TRANSITIONS["replay"].sources[0][0] == JobStatus.FAILED.value


def test_what_a_worker_records_about_its_run_needs_that_run() -> None:
    for name in ("progress", "complete", "retry", "fail_run"):
        row = TRANSITIONS[name]
        assert row.requires_run and not row.takes_run, name
        assert row.sources == ((JobStatus.ACTIVE.value, row.sources[0][1]),), name
    for name in ("start", "take_over"):
        assert TRANSITIONS[name].takes_run and not TRANSITIONS[name].requires_run
    # The gateway, an operator and a client hold no run.
    for name in ("create", "fail", "cancel", "replay"):
        assert not TRANSITIONS[name].requires_run and not TRANSITIONS[name].takes_run


@pytest.mark.parametrize("row", TRANSITIONS.values(), ids=lambda row: row.name)
def test_each_row_keeps_the_indexes_and_expiry_in_step_with_its_target(row: Transition) -> None:
    finished = row.target.is_terminal
    assert (row.expiry is Expiry.RETENTION) == finished
    if row.target == JobStatus.WAITING:
        assert row.unstarted is Unstarted.ADD and row.event == EventKind.QUEUED
    elif any(status == JobStatus.WAITING.value for status, _ in row.sources):
        assert row.unstarted is Unstarted.REMOVE  # it no longer waits to be started
    assert row.notify_cancel == (row.target == JobStatus.CANCELLED)


def test_every_key_of_one_job_shares_its_shards_slot() -> None:
    keys = RedisKeys("p:", shards=16)
    job_id = "9b1f0c5e2d7a4e3f8c6b5a4d3e2f1a0b"
    shard = keys.shard(job_id)
    names = [
        keys.job(job_id),
        keys.job_events(job_id),
        keys.job_checkpoints(job_id),
        keys.webhook_deliveries(job_id),
        keys.outbox(shard),
        keys.unstarted(shard),
        keys.tenant_jobs("acme", shard),
        keys.tenant_events("acme", shard),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert shard == shard_of(job_id, 16)  # stable: the same in every process


def test_the_shards_spread_over_a_three_master_cluster() -> None:
    keys = RedisKeys(shards=16)
    slots = [key_slot(keys.outbox(shard).encode()) for shard in keys.all_shards]
    masters = {slot * 3 // 16384 for slot in slots}  # three equal slot ranges
    assert masters == {0, 1, 2}


def test_a_shard_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RedisKeys(shards=0)


def test_a_merged_stream_cursor_names_every_shard_it_has_read() -> None:
    positions = {0: "0-0", 3: "1700000000000-0", 11: "1700000000042-1"}
    text = stream_cursor.encode(positions)
    assert text == "3.1700000000000-0_11.1700000000042-1"
    decoded = stream_cursor.decode(text, 16)
    assert decoded[3] == "1700000000000-0" and decoded[11] == "1700000000042-1"
    assert {position for shard, position in decoded.items() if shard not in (3, 11)} == {"0-0"}
    assert stream_cursor.decode(stream_cursor.encode({0: "0-0"}), 2) == {0: "0-0", 1: "0-0"}


@pytest.mark.parametrize(
    "text", ["garbage", "1700000000000-0", "16.1-0", "3.1-x", "3.18446744073709551616-0", "-1.1-0"]
)
def test_a_cursor_not_handed_out_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        stream_cursor.decode(text, 16)
