"""`wait_until`, the tests' one polling helper: it returns what it awaited, or says why not."""

import asyncio

import pytest

from tests.support.waiting import sync_probe, wait_until


class Counter:
    def __init__(self) -> None:
        self.asked = 0

    async def next(self) -> int:
        self.asked += 1
        return self.asked


async def test_it_returns_the_first_answer_that_is_awaited() -> None:
    counter = Counter()

    found = await wait_until(counter.next, lambda n: n >= 3, timeout=5, what="three", interval=0)

    assert found == 3 and counter.asked == 3


async def test_without_a_condition_it_waits_for_a_truthy_answer() -> None:
    answers = iter([None, [], ["job"]])

    async def probe() -> list[str] | None:
        return next(answers)

    assert await wait_until(probe, timeout=5, what="a job", interval=0) == ["job"]


async def test_a_long_answer_is_shown_as_described() -> None:
    async def probe() -> list[int]:
        return list(range(1000))

    with pytest.raises(AssertionError) as failed:
        await wait_until(
            probe, lambda _: False, timeout=0, what="x", describe=lambda a: f"{len(a)}"
        )

    assert str(failed.value) == "waited 0 s for x; last seen: 1000"


async def test_at_the_timeout_it_fails_naming_what_it_waited_for_and_the_last_answer() -> None:
    counter = Counter()
    started = asyncio.get_running_loop().time()

    with pytest.raises(AssertionError) as failed:
        await wait_until(counter.next, lambda n: n < 0, timeout=0.2, what="a negative number")

    took = asyncio.get_running_loop().time() - started
    assert "waited 0.2 s for a negative number; last seen: " in str(failed.value)
    assert str(failed.value).endswith(f"last seen: {counter.asked}")
    assert 0.2 <= took < 2
    # Asked at once, every 50 ms at most, and once more at the deadline.
    assert 2 <= counter.asked <= 6


async def test_a_plain_function_is_a_probe_through_sync_probe() -> None:
    answers = iter([0, 0, 7])

    found = await wait_until(sync_probe(lambda: next(answers)), timeout=5, what="seven", interval=0)

    assert found == 7
