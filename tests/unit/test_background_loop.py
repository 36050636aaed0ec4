"""Background loops stop when asked, within a bound, whatever their step does."""

import asyncio
import contextlib
import time

from offload_runtime.loops import BackgroundLoop


async def test_a_loop_between_steps_stops_at_once() -> None:
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1

    loop = BackgroundLoop("test", step, interval_s=3600)
    loop.start()
    while steps == 0:
        await asyncio.sleep(0.001)

    started = time.monotonic()
    await loop.stop()

    assert time.monotonic() - started < 0.5
    assert not loop.running
    assert steps == 1


async def test_a_failing_step_does_not_end_the_loop() -> None:
    calls = 0
    third = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        raise ConnectionError("Redis is away")

    loop = BackgroundLoop("test", step, interval_s=0.001)
    loop.start()
    await asyncio.wait_for(third.wait(), 5)
    assert loop.running
    await loop.stop()


async def test_a_step_that_swallows_its_cancel_cannot_hold_the_stop() -> None:
    """As redis-py can, when a cancel lands while it sets a connection up."""
    in_step = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        in_step.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    loop = BackgroundLoop("test", stubborn, interval_s=0.01, stop_wait_s=0.1)
    loop.start()
    await in_step.wait()

    started = time.monotonic()
    await loop.stop()
    took = time.monotonic() - started

    assert took < 1.0, f"stop took {took:.2f} s; its bound is two waits of 0.1 s"
    release.set()
    await asyncio.sleep(0)
