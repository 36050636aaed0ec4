"""The process pool that runs the Pillow pipeline off the event loop (DESIGN §5.5).

Why a process pool: Pillow releases the GIL for much of its C work, but not
for all of it, and a worker's event loop must keep its AMQP heartbeats, its
Redis calls and its other jobs going while a 24-megapixel photo is decoded.
So `pipeline.render` runs in separate processes; the event loop only submits
a path and a few operations and gets back a few numbers.

- Sources are read from a path and outputs written to a directory on the same
  filesystem as the file store, so large images never cross the process
  boundary or sit in the event loop's memory.
- Pool processes start with `forkserver` (or `spawn`), never `fork`: the
  worker has threads (the executor's, the progress reader's), and forking a
  threaded process can deadlock the child.
- Pool processes run at a lower priority (`nice`), so on a busy machine the
  event loop gets the CPU first and its lag stays low.
- Progress flows back through a `multiprocessing.Queue` handed to each pool
  process when it starts; a thread reads it and hands each report to the
  event loop.
- A pool process that dies (SIGKILL, the OOM killer) breaks the whole
  executor: every job running in it gets `BrokenProcessPool`. The pool is
  then replaced with a fresh one and those jobs raise `TransientError`, so
  they are retried through the delay tiers and the worker carries on.
"""

import asyncio
import contextlib
import itertools
import multiprocessing
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload_image.adapters import pool_process
from offload_image.pipeline import Operation, RenderedImage, Report
from offload_runtime.errors import TransientError
from offload_runtime.logging import get_logger

log = get_logger("offload.image.pool")

_READER_POLL_S = 0.2


# --------------------------------------------------------------- in the worker


@dataclass
class _Generation:
    """One executor and its progress channel; replaced together when a process dies."""

    executor: ProcessPoolExecutor
    progress: Any  # multiprocessing.Queue
    reader: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)


class PipelinePool:
    """Runs `pipeline.render` in a process pool of `size` processes.

    `start()` must be called from the event loop that will use the pool.
    """

    def __init__(
        self,
        *,
        size: int,
        scratch_dir: Path,
        max_pixels: int,
        start_method: str = "forkserver",
        niceness: int = 10,
    ) -> None:
        self.size = size
        self._scratch = scratch_dir / "image"
        self._max_pixels = max_pixels
        self._niceness = niceness
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server loads Pillow and the pipeline once; every pool
            # process (and every replacement after a crash) starts with them.
            # Ignored if this process's fork server is already running.
            self._context.set_forkserver_preload([pool_process.__name__])
        self._generation: _Generation | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[int, Report] = {}
        self._tokens = itertools.count(1)
        self.rebuilds = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the pool processes and wait until each has loaded Pillow."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._scratch.mkdir, parents=True, exist_ok=True)
        self._generation = self._new_generation()
        await self._warm_up(self._generation)

    async def close(self) -> None:
        """Stop the pool. Work still running in it is abandoned (its jobs were cancelled)."""
        generation, self._generation = self._generation, None
        if generation is not None:
            await asyncio.to_thread(self._retire, generation)

    def pids(self) -> list[int]:
        """Process ids of the current pool processes (for operators and tests)."""
        if self._generation is None:
            return []
        # `_processes` is the executor's pid → Process map; there is no public accessor.
        return list(self._generation.executor._processes or {})

    # ------------------------------------------------------------------ rendering

    @contextlib.asynccontextmanager
    async def render(
        self, source: Path, operations: Sequence[Operation], report: Report
    ) -> AsyncIterator[list[RenderedImage]]:
        """Render in a pool process; yield the outputs, then remove what is left of them.

        The caller adopts the files it wants (moving them away) inside the block.
        """
        if self._generation is None:
            raise TransientError("the image pool is not running")
        out_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=self._scratch))
        token = next(self._tokens)
        self._listeners[token] = report
        future: Future[list[RenderedImage]] | None = None
        try:
            future, generation = self._submit(token, source, operations, out_dir)
            try:
                rendered = await asyncio.wrap_future(future)
            except BrokenProcessPool as exc:
                self._replace(generation)
                raise TransientError(
                    "an image pool process died (killed or out of memory); "
                    "the pool was rebuilt and the job will be retried"
                ) from exc
            yield rendered
        finally:
            self._listeners.pop(token, None)
            if future is not None and not future.done():
                # Cancelled (job timeout, cancel, shutdown) while the pool process
                # still works on it: clean up once it has finished writing.
                future.add_done_callback(lambda _: shutil.rmtree(out_dir, ignore_errors=True))
            else:
                await asyncio.to_thread(shutil.rmtree, out_dir, True)

    def _submit(
        self, token: int, source: Path, operations: Sequence[Operation], out_dir: Path
    ) -> "tuple[Future[list[RenderedImage]], _Generation]":
        args = (token, str(source), list(operations), str(out_dir), self._max_pixels)
        generation = self._generation
        if generation is None:
            raise TransientError("the image pool is shutting down")
        try:
            return generation.executor.submit(pool_process.render_in_pool, *args), generation
        except BrokenProcessPool:
            # A process died while idle: the job never ran, so run it on a fresh pool.
            self._replace(generation)
        except RuntimeError as exc:  # shut down meanwhile
            raise TransientError("the image pool is shutting down") from exc
        fresh = self._generation
        assert fresh is not None
        return fresh.executor.submit(pool_process.render_in_pool, *args), fresh

    # ------------------------------------------------------------------ generations

    def _new_generation(self) -> _Generation:
        progress = self._context.Queue()
        executor = ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=self._context,
            initializer=pool_process.init_pool_process,
            initargs=(progress, self._max_pixels, self._niceness),
        )
        generation = _Generation(executor=executor, progress=progress)
        generation.reader = threading.Thread(
            target=self._read_progress,
            args=(generation,),
            name="image-pool-progress",
            daemon=True,
        )
        generation.reader.start()
        return generation

    def _replace(self, broken: _Generation) -> None:
        """Swap in a fresh pool, once, however many jobs saw the old one break."""
        if broken is not self._generation:
            return  # already replaced (or closing)
        self.rebuilds += 1
        log.warning("image pool process died; rebuilding the pool", rebuilds=self.rebuilds)
        fresh = self._new_generation()
        self._generation = fresh

        def swap() -> None:
            # Off the event loop: start the new processes (as warm-up tasks, so
            # the next job does not pay for it) and reap the old ones.
            for _ in range(self.size):
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    fresh.executor.submit(pool_process.warm_up)
            self._retire(broken)

        threading.Thread(target=swap, name="image-pool-rebuild", daemon=True).start()

    def _retire(self, generation: _Generation) -> None:
        executor = generation.executor
        processes = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()  # pool processes ignore SIGTERM (see pool_process)
        for process in processes:
            process.join(timeout=5)
        generation.stop.set()
        if generation.reader is not None:
            generation.reader.join(timeout=2 * _READER_POLL_S + 1)
        generation.progress.close()

    async def _warm_up(self, generation: _Generation) -> None:
        futures = [generation.executor.submit(pool_process.warm_up) for _ in range(self.size)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    # ------------------------------------------------------------------ progress

    def _read_progress(self, generation: _Generation) -> None:
        # Polls with a timeout rather than waiting for a sentinel: a pool process
        # killed mid-write can leave the queue unusable, and this thread must
        # still end when its generation is retired.
        while not generation.stop.is_set():
            try:
                token, percent, message = generation.progress.get(timeout=_READER_POLL_S)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            try:
                loop.call_soon_threadsafe(self._dispatch, token, percent, message)
            except RuntimeError:  # the loop closed meanwhile
                return

    def _dispatch(self, token: int, percent: float, message: str) -> None:
        listener = self._listeners.get(token)
        if listener is not None:
            listener(percent, message)
