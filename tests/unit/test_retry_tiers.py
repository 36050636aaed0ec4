import pytest

from offload_runtime.retry_tiers import pick_tier
from offload_runtime.settings import RetryTier, parse_duration_ms, parse_retry_tiers


def test_tiers_parse_in_every_unit_and_sort_shortest_first() -> None:
    assert parse_retry_tiers("1h, 30s,2m,50ms") == (
        RetryTier("50ms", 50),
        RetryTier("30s", 30_000),
        RetryTier("2m", 120_000),
        RetryTier("1h", 3_600_000),
    )


@pytest.mark.parametrize("bad", ["", "10", "5 days", "-1s", "0ms", "s"])
def test_bad_durations_are_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ValueError, match=r"duration|OFFLOAD_RETRY_TIERS"):
        parse_retry_tiers(bad) if "," in bad or not bad else parse_duration_ms(bad)


def test_each_attempt_waits_in_the_next_tier_then_stays_in_the_last() -> None:
    tiers = parse_retry_tiers("30s,2m,10m")
    assert [pick_tier(tiers, attempt, None).name for attempt in (1, 2, 3, 4, 9)] == [
        "30s",
        "2m",
        "10m",
        "10m",
        "10m",
    ]


def test_retry_after_picks_the_first_tier_at_least_that_long() -> None:
    tiers = parse_retry_tiers("30s,2m,10m")
    assert pick_tier(tiers, 1, 45).name == "2m"
    assert pick_tier(tiers, 1, 30).name == "30s"
    assert pick_tier(tiers, 1, 5000).name == "10m"


def test_tier_choice_is_a_pure_function_of_its_own_module() -> None:
    from offload_runtime import retry_tiers

    tiers = parse_retry_tiers("1s,10s")
    assert [retry_tiers.next_tier(tiers, n, 3, None) for n in (1, 2, 3)] == [
        tiers[0],
        tiers[1],
        None,
    ]
    assert retry_tiers.next_tier(tiers, 1, 3, 5.0) == tiers[1]
    assert retry_tiers.exhausted("HTTP 503", 3, 3) == "HTTP 503 (attempts exhausted: 3 of 3)"
