"""What runs inside a pool process: its set-up, a warm-up task, and the render entry point.

Kept apart from `pool.py` so a pool process imports Pillow and the pipeline
only, not the worker's logging, broker or HTTP stack; the forkserver imports
this module once and every pool process starts with it already loaded.
"""

import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from PIL import Image

from offload_image import pipeline
from offload_image.pipeline import Operation, RenderedImage

_progress: "Queue[Any] | None" = None


def init_pool_process(progress: "Queue[Any]", max_pixels: int, niceness: int) -> None:
    """Run once in each pool process when it starts."""
    global _progress
    _progress = progress
    # Pillow's own bomb check (at open) reads this global; the pipeline also
    # checks every intermediate size against the same limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    if niceness:
        os.nice(niceness)
    # Ctrl-C, or a SIGTERM sent to the whole process group, must not kill renders
    # in flight: the worker stops the pool itself, after the jobs' grace period.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_the_worker()


def _exit_with_the_worker() -> None:
    """End this process as soon as the worker that owns the pool has exited.

    The worker kills its pool when it stops, but it cannot when it is killed
    itself, nor when a SIGTERM to the whole process group (honcho under `make
    run`, systemd's default kill mode) has already ended the forkserver: the worker then
    sees its pool processes as gone and they would wait for work for ever,
    orphaned, holding the service's output open. `parent_process()` is the
    worker here (the forkserver hands its pool processes the worker's
    liveness pipe), and its sentinel closes when the worker exits.
    """
    worker = multiprocessing.parent_process()
    if worker is None:
        return

    def watch() -> None:
        worker.join()
        os._exit(0)  # nothing of this process outlives its worker; no clean-up to run

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()


def warm_up() -> int:
    """Load every format plugin now rather than during the first job."""
    Image.init()
    pipeline.writable_formats()
    return os.getpid()


def render_in_pool(
    token: int, source: str, operations: Sequence[Operation], out_dir: str, max_pixels: int
) -> list[RenderedImage]:
    """`pipeline.render`, with progress sent back to the worker tagged with `token`."""

    def report(percent: float, message: str) -> None:
        if _progress is not None:
            _progress.put_nowait((token, percent, message))

    return pipeline.render(
        Path(source), operations, Path(out_dir), max_pixels=max_pixels, report=report
    )
