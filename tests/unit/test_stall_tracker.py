"""A stalled work queue (messages ready, no consumer) is alerted once per stall, after a delay."""

from datetime import UTC, datetime, timedelta

from offload_notifier.stalls import StallTracker

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_stall_is_alerted_once_after_it_lasted_the_delay() -> None:
    tracker = StallTracker(alert_after=timedelta(seconds=60))
    assert tracker.observe("video.jobs", 3, 0, at(0)) is None
    assert tracker.observe("video.jobs", 3, 0, at(59)) is None
    alert = tracker.observe("video.jobs", 4, 0, at(60))
    assert alert is not None
    assert (alert.queue, alert.ready, alert.since, alert.at) == ("video.jobs", 4, at(0), at(60))
    assert tracker.observe("video.jobs", 4, 0, at(120)) is None


def test_a_consumer_or_an_empty_queue_ends_the_stall_and_a_new_one_alerts_again() -> None:
    tracker = StallTracker(alert_after=timedelta(seconds=10))
    tracker.observe("ai.jobs", 1, 0, at(0))
    assert tracker.observe("ai.jobs", 1, 0, at(10)) is not None
    assert tracker.observe("ai.jobs", 1, 1, at(11)) is None  # a consumer is back
    assert tracker.observe("ai.jobs", 1, 0, at(12)) is None  # a new stall starts here
    assert tracker.observe("ai.jobs", 1, 0, at(21)) is None
    assert tracker.observe("ai.jobs", 1, 0, at(22)) is not None


def test_an_idle_queue_is_not_a_stall() -> None:
    tracker = StallTracker(alert_after=timedelta(seconds=0))
    assert tracker.observe("image.jobs", 0, 0, at(0)) is None
    assert tracker.observe("image.jobs", 0, 0, at(100)) is None
