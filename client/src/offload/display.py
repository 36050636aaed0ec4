"""How the CLI and the demo show jobs in a terminal: progress bars, tables, results."""

import json
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from offload.errors import ApiError, OffloadError, ValidationFailed
from offload.models import Job
from offload_contracts import JobStatus

STATUS_STYLE: dict[JobStatus, str] = {
    JobStatus.WAITING: "bright_black",
    JobStatus.ACTIVE: "cyan",
    JobStatus.DELAYED: "yellow",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}


def status_text(job: Job) -> Text:
    label = job.status.value
    if job.status is JobStatus.DELAYED and job.next_attempt_at:
        label += f" (retry at {job.next_attempt_at:%H:%M:%S})"
    if job.attempt > 1 and not job.finished:
        label += f" · attempt {job.attempt}/{job.max_attempts or '?'}"
    return Text(label, style=STATUS_STYLE.get(job.status, ""))


def job_message(job: Job) -> str:
    if job.error and job.status in (JobStatus.DELAYED, JobStatus.FAILED):
        return f"{job.error.type}: {job.error.message}"
    if job.finished:
        return ""  # the status says it all
    return job.progress.message if job.progress else ""


class JobBars:
    """One progress bar per job, fed with each new state of the job.

    Use as a context manager around the watching; it renders live (Rich) and
    leaves the final bars on screen.
    """

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[type]:<15}"),
            TextColumn("[bright_black]{task.fields[short_id]}"),
            BarColumn(bar_width=28),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("[bright_black]{task.fields[message]}", markup=True),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=8,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "JobBars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.refresh()
        self.progress.stop()

    def update(self, job: Job) -> None:
        fields: dict[str, Any] = {
            "type": job.type,
            "short_id": job.id[:12],
            "status": status_text(job).markup,
            "message": _escape(job_message(job))[:60],
        }
        task = self._tasks.get(job.id)
        if task is None:
            self._tasks[job.id] = self.progress.add_task("", total=100, **fields)
            task = self._tasks[job.id]
        self.progress.update(task, completed=job.percent, **fields)
        if job.finished:
            self.progress.stop_task(task)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def job_table(jobs: list[Job]) -> Table:
    table = Table(show_lines=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("type", no_wrap=True)
    for column in ("status", "progress", "attempt", "created", "finished"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.id,
            job.type,
            status_text(job),
            f"{job.percent:.0f}%",
            f"{job.attempt}/{job.max_attempts or '?'}",
            _when(job.created_at),
            _when(job.finished_at),
        )
    return table


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def job_panel(job: Job) -> Panel:
    """Everything about one job: state, then its result or its error."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("id", job.id)
    facts.add_row("type", job.type)
    facts.add_row("status", status_text(job))
    facts.add_row("attempt", f"{job.attempt}/{job.max_attempts or '?'}")
    if job.progress and not job.finished:
        facts.add_row("progress", f"{job.percent:.0f}% {job.progress.message}")
    for label, moment in (
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("next attempt", job.next_attempt_at),
    ):
        if moment:
            facts.add_row(label, _when(moment))
    parts: list[RenderableType] = [facts]
    if job.error:
        parts.append(Text(f"\n{job.error.type}: {job.error.message}", style="red"))
    if job.result is not None:
        parts.append(Text("\nresult", style="bold"))
        result = JSON(json.dumps(job.result))
        result.text.no_wrap = False  # long texts (an LLM's answer) wrap instead of being cut
        result.text.overflow = "fold"
        parts.append(result)
        for file in job.files():
            parts.append(
                Text(f"file {file.id}: {file.bytes} bytes, {file.content_type}", style="green")
            )
        if job.files():
            parts.append(Text(f"download: offload download --job {job.id}", style="bright_black"))
    return Panel(Group(*parts), title=f"job {job.id}", expand=False)


def error_text(exc: OffloadError) -> Text:
    """An error as the CLI prints it: the problem's detail, and each bad field of a 422."""
    text = Text(f"error: {exc}", style="bold red")
    if isinstance(exc, ValidationFailed):
        for field in exc.errors:
            where = ".".join(str(part) for part in field.get("loc", []) if part != "body")
            text.append(f"\n  {where + ': ' if where else ''}{field.get('msg', '')}", style="red")
    elif isinstance(exc, ApiError) and exc.retry_after is not None:
        text.append(f"\n  retry after {exc.retry_after:g}s", style="yellow")
    return text
