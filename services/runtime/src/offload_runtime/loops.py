"""Background loops: one way to start them, pace them and stop them.

Every service runs loops beside its consumers: the gateway's sweep and broker
link, the workers' in-flight reports, consumer watchdog and cancel listener,
the notifier's outbox relay and stall watch.
Each is a `step` run every `interval_s`, with these rules:

- A step that fails is logged (the first of a run of failures in full, the
  rest in brief) and the loop goes on: a loop is never the reason a process
  dies. (A step that must stop the process says so some other way,
  as the watchdog does with `Worker.give_up`.)
- `stop()` asks: it sets an event that the pause between two steps waits on, so
  a loop between steps stops at once and a loop in a step stops when the step
  ends. Only a step still running after `stop_wait_s` is cancelled, and the
  stop waits for that cancel at most `stop_wait_s` more. Cancelling first would not
  do: redis-py can lose a cancel that lands while it sets a connection up (and
  `await task` after `task.cancel()` then waits for ever), which is how the
  gateway's shutdown once hung behind its sweep.
- A step that reads or writes remote state should bound its own calls; the
  loop bounds nothing but its stop. A step that blocks on purpose (a stream
  read) races that wait against `until_stopped()`, so a stop does not wait
  for it.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from offload_runtime.logging import get_logger

STOP_WAIT_S = 2.0
"""How long `stop()` lets a running step finish before cancelling it."""

log = get_logger("offload.loops")


class BackgroundLoop:
    """Runs `step()` now and then every `interval_s`, until `stop()`."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval_s: float,
        *,
        stop_wait_s: float = STOP_WAIT_S,
    ) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._stop_wait_s = stop_wait_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Ask the loop to stop; cancel a step that outlives `stop_wait_s`. Bounded."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await finish(task, self._stop_wait_s)

    async def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                await self._step()
            except Exception as exc:
                # The first failure of a run of them with its traceback, the rest in brief:
                # a dependency that is down must not flood the log.
                if failing:
                    log.debug("background step failed again", loop=self.name, error=repr(exc))
                else:
                    log.warning("background step failed; retrying", loop=self.name, exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("background step succeeded again", loop=self.name)
                failing = False
            await self.pause(self._interval_s)

    async def until_stopped(self) -> None:
        """Return once the loop is asked to stop: a step races a long wait against it."""
        await self._stopping.wait()

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the loop is asked to stop; True when asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()


async def finish(task: "asyncio.Task[Any]", wait_s: float) -> None:
    """Let `task` end within `wait_s`, else cancel it and wait `wait_s` more, never longer.

    Never `task.cancel(); await task`: a task that swallows its cancel (as
    redis-py and aio-pika can) would hold the caller for ever. A task left
    behind is logged; the process's exit deals with it.
    """
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    if not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=wait_s)
    if not done:
        log.warning("task did not end when cancelled; left behind", task=task.get_name())
    elif not task.cancelled() and task.exception() is not None:
        log.error("task ended with an error", task=task.get_name(), exc_info=task.exception())
