"""`make demo` / `offload demo`: one job of each type, progressing side by side.

Draws a picture with Pillow, uploads it, submits ai.generate, research.run,
video.generate and image.process, and follows all four at once over SSE,
then prints what each produced.
"""

import asyncio
import io
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from offload.async_client import AsyncOffload
from offload.display import JobBars, status_text
from offload.models import Job
from offload.settings import ClientSettings
from offload_contracts import JobStatus


def demo_image(width: int = 800, height: int = 600) -> bytes:
    """A PNG drawn on the spot: a gradient, a sun and a horizon."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = int(255 * y / height)
        draw.line([(0, y), (width, y)], fill=(40 + shade // 3, 90 + shade // 4, 200 - shade // 2))
    draw.ellipse((width * 0.6, height * 0.15, width * 0.8, height * 0.42), fill=(255, 210, 80))
    draw.rectangle((0, height * 0.7, width, height), fill=(30, 110, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def demo_jobs(file_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The four submissions, one per job type."""
    return [
        (
            "ai.generate",
            {
                "prompt": "Write a haiku about a queue that never loses a message.",
                "max_tokens": 120,
            },
        ),
        (
            "research.run",
            {"question": "Why do job systems retry with increasing delays?", "steps": 3},
        ),
        (
            "video.generate",
            {
                "prompt": "A paper boat drifting down a rainy street",
                "duration_s": 4,
                "resolution": "480p",
            },
        ),
        (
            "image.process",
            {
                "source": {"file_id": file_id},
                "operations": [
                    {"op": "resize", "width": 400},
                    {"op": "convert", "format": "webp"},
                    {
                        "op": "thumbnails",
                        "sizes": [{"width": 64, "height": 64}, {"width": 128, "height": 128}],
                    },
                ],
            },
        ),
    ]


def summary(job: Job) -> str:
    """One line about what a finished job produced."""
    if job.error and job.status is not JobStatus.COMPLETED:
        return f"{job.error.type}: {job.error.message}"
    result = job.result or {}
    if job.type == "ai.generate":
        return " ".join(str(result.get("text", "")).split())[:90]
    if job.type == "research.run":
        return (
            f"{len(result.get('steps', []))} steps; "
            + " ".join(str(result.get("report", "")).split())[:70]
        )
    files = job.files()
    if job.type == "image.process" and files:
        return (
            f"{result.get('width')}×{result.get('height')} {result.get('format')}, "
            f"{len(files) - 1} thumbnails"
        )
    if files:
        return f"{files[0].bytes:,} bytes {files[0].content_type}, sha256 {files[0].sha256[:12]}…"
    return job.status.value


async def _run(settings: ClientSettings, console: Console, timeout_s: float) -> bool:
    async with AsyncOffload(settings=settings) as client:
        console.print("[bold]Offload demo[/]: drawing a picture and uploading it…")
        picture = await client.upload(demo_image(), filename="demo.png", content_type="image/png")
        console.print(f"  uploaded [bold]{picture.id}[/] ({picture.bytes:,} bytes)")
        submitted = [
            await client.submit(job_type, job_input)
            for job_type, job_input in demo_jobs(picture.id)
        ]
        console.print(f"  submitted {len(submitted)} jobs; following them live:\n")
        started = time.monotonic()
        with JobBars(console) as bars:
            for job in submitted:
                bars.update(job)
            outcomes = await asyncio.gather(
                *(
                    client.wait(job.id, timeout_s=timeout_s, on_update=bars.update)
                    for job in submitted
                ),
                return_exceptions=True,
            )
    elapsed = time.monotonic() - started
    table = Table(header_style="bold", title=f"finished in {elapsed:.1f}s")
    for column in ("type", "status", "attempts", "result"):
        table.add_column(column)
    ok = True
    for job, outcome in zip(submitted, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            ok = False
            table.add_row(job.type, "[red]error[/]", "", str(outcome))
            continue
        ok = ok and outcome.status is JobStatus.COMPLETED
        table.add_row(
            outcome.type,
            status_text(outcome),
            f"{outcome.attempt}/{outcome.max_attempts or '?'}",
            summary(outcome),
        )
    console.print(table)
    return ok


def run_demo(settings: ClientSettings, console: Console, *, timeout_s: float = 600) -> bool:
    """Run the demo; True when all four jobs completed."""
    return asyncio.run(_run(settings, console, timeout_s))
