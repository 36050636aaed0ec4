"""`offload`: submit jobs and watch them from a terminal, built on the client.

Configuration comes from `OFFLOAD_URL`, `OFFLOAD_NOTIFIER_URL`, `OFFLOAD_API_KEY`
and `OFFLOAD_ADMIN_KEY` (read by `ClientSettings`), or from the flags before the
command: `offload --api-key dev-key submit ai.generate --input '{"prompt": "hi"}' --watch`.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON
from rich.table import Table

from offload.client import Offload
from offload.display import JobBars, error_text, job_panel, job_table
from offload.errors import ConnectionFailed, OffloadError
from offload.models import Job
from offload.settings import ClientSettings
from offload_contracts import JobStatus

app = typer.Typer(
    name="offload",
    help="Submit jobs to Offload, watch them progress, fetch their results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dead_letters_app = typer.Typer(help="Inspect and replay dead letters (admin key).")
app.add_typer(dead_letters_app, name="dead-letters")

console = Console()
err_console = Console(stderr=True)


@dataclass
class Connection:
    """Where to reach Offload: the environment's settings, with the flags on top."""

    settings: ClientSettings

    def client(self) -> Offload:
        return Offload(settings=self.settings)


@app.callback()
def options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="Gateway URL (env OFFLOAD_URL; default http://127.0.0.1:8000)"),
    ] = None,
    notifier_url: Annotated[
        str | None,
        typer.Option(
            help="Notifier URL, for live events, when not where the jobs' links say "
            "(env OFFLOAD_NOTIFIER_URL)"
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (env OFFLOAD_API_KEY)")] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="Admin key, for dead letters (env OFFLOAD_ADMIN_KEY)")
    ] = None,
) -> None:
    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("url", url),
            ("notifier_url", notifier_url),
            ("api_key", api_key),
            ("admin_key", admin_key),
        )
        if value is not None
    }
    ctx.obj = Connection(ClientSettings(**overrides))


def parse_input(text: str) -> dict[str, Any]:
    """`--input`: inline JSON, `@path` to a JSON file, or `-` for standard input."""
    source = "--input"
    if text == "-":
        text, source = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            text, source = path.read_text(), str(path)
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{source} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{source} must be a JSON object, got {type(value).__name__}")
    return value


def _print_json(value: Any) -> None:
    if console.is_terminal:
        console.print(JSON(json.dumps(value, default=str)))
    else:  # piped (`| jq`): plain JSON, never wrapped or coloured
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _finish(job: Job) -> None:
    console.print(job_panel(job))
    if job.status is not JobStatus.COMPLETED:
        raise typer.Exit(1)


def follow(client: Offload, job: Job, *, timeout_s: float | None) -> Job:
    """Show a live progress bar until the job finishes; return the finished job.

    The bar goes to stderr, like curl's, so stdout carries only the result.
    """
    with JobBars(err_console) as bars:
        bars.update(job)
        return client.wait(job.id, timeout_s=timeout_s, on_update=bars.update)


@app.command()
def submit(
    ctx: typer.Context,
    type: Annotated[
        str, typer.Argument(help="ai.generate, research.run, video.generate or image.process")
    ],
    input: Annotated[
        str, typer.Option("--input", "-i", help="The input: JSON, @file.json, or - for stdin")
    ],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Show live progress until the job ends")
    ] = False,
    webhook: Annotated[
        str | None, typer.Option(help="POST the job's events to this URL, signed")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key and body again: the same job, not a new one")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="With --watch: give up watching after this many seconds")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON")] = False,
) -> None:
    """Submit a job; with --watch, follow it to the end and show the result."""
    payload = parse_input(input)
    with ctx.obj.client() as client:
        job = client.submit(type, payload, webhook=webhook, idempotency_key=idempotency_key)
        if not watch:
            if as_json:
                _print_json(job.model_dump(mode="json"))
            else:
                console.print(f"[green]submitted[/] {job.type} [bold]{job.id}[/] ({job.status})")
                console.print(f"[bright_black]follow it: offload watch {job.id}[/]")
            return
        done = follow(client, job, timeout_s=timeout)
    if as_json:
        _print_json(done.model_dump(mode="json"))
        if done.status is not JobStatus.COMPLETED:
            raise typer.Exit(1)
        return
    _finish(done)


@app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id")],
    timeout: Annotated[
        float | None, typer.Option(help="Give up watching after this many seconds")
    ] = None,
) -> None:
    """Follow a job with a live progress bar until it ends, then show the result."""
    with ctx.obj.client() as client:
        done = follow(client, client.get(job_id), timeout_s=timeout)
    _finish(done)


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON")] = False,
) -> None:
    """Show a job: its state, progress, result or error."""
    with ctx.obj.client() as client:
        job = client.get(job_id)
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        console.print(job_panel(job))


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="waiting, active, delayed, completed, failed or cancelled"),
    ] = None,
    type: Annotated[str | None, typer.Option(help="Only this job type")] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page")] = 20,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON")] = False,
) -> None:
    """List your jobs, newest first."""
    with ctx.obj.client() as client:
        page = client.list(status=status, type=type, limit=limit, cursor=cursor)
    if as_json:
        _print_json(page.model_dump(mode="json"))
        return
    console.print(job_table(page.items))
    if page.next_cursor:
        console.print(f"[bright_black]more: offload list --cursor {page.next_cursor}[/]")


@app.command()
def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job's id")]) -> None:
    """Cancel a job that has not finished."""
    with ctx.obj.client() as client:
        job = client.cancel(job_id)
    console.print(f"[magenta]cancel[/] {job.id}: {job.status}")


@app.command()
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The file")],
    content_type: Annotated[str | None, typer.Option(help="MIME type (guessed)")] = None,
) -> None:
    """Upload a file; prints its id, for an image.process job's `source.file_id`."""
    with ctx.obj.client() as client:
        stored = client.upload(path, content_type=content_type)
    _print_json(stored.model_dump(mode="json"))


@app.command()
def download(
    ctx: typer.Context,
    id: Annotated[str, typer.Argument(help="A file id, or with --job a job id")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File or directory to write to")
    ] = Path("."),
    job: Annotated[
        bool, typer.Option("--job", help="ID is a job: download every file of its result")
    ] = False,
) -> None:
    """Download a file, or all of a finished job's result files (SHA-256 checked)."""
    with ctx.obj.client() as client:
        if not job:
            console.print(f"[green]saved[/] {client.download(id, output)}")
            return
        found = client.get(id)
        files = found.files()
        if not files:
            err_console.print(f"[red]job {id} ({found.status}) has no result files[/]")
            raise typer.Exit(1)
        if len(files) > 1:
            output.mkdir(parents=True, exist_ok=True)
        for file in files:
            path = client.download(file, output)
            console.print(f"[green]saved[/] {path} ({file.bytes} bytes, sha256 ok)")


@app.command()
def queues(ctx: typer.Context) -> None:
    """Per queue: ready, unacked, consumers, dead letters (admin key)."""
    with ctx.obj.client() as client:
        _print_json(client.queues())


@dead_letters_app.command("list")
def dead_letters_list(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="A service (video) or its dead queue (video.dead)")],
    offset: Annotated[int, typer.Option(help="Skip this many letters")] = 0,
    limit: Annotated[int | None, typer.Option(help="At most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON")] = False,
) -> None:
    """Show why jobs failed for good: the messages parked in a dead-letter queue."""
    with ctx.obj.client() as client:
        page = client.dead_letters(queue, offset=offset, limit=limit)
    if as_json:
        _print_json(page.model_dump(mode="json"))
        return
    table = Table(header_style="bold")
    table.add_column("job", no_wrap=True)
    for column in ("type", "tenant", "reason", "attempts", "failed at", "error"):
        table.add_column(column)
    for letter in page.items:
        error = (letter.error or "")[:100]
        if letter.webhook is not None:  # a parked webhook delivery: say where it was going
            hook = letter.webhook
            status = f", last HTTP {hook.last_status}" if hook.last_status else ""
            error = f"webhook {hook.event or '?'} → {hook.url_origin or '?'}{status}: {error}"
        table.add_row(
            letter.job_id or "?",
            letter.type or "",
            letter.tenant or "",
            letter.reason,
            str(letter.attempts or ""),
            letter.failed_at or "",
            error,
        )
    console.print(table)
    shown = f"{offset + 1}-{offset + len(page.items)}" if page.items else "none"
    console.print(f"[bright_black]{page.queue}: {page.total} dead letter(s), showing {shown}[/]")
    if page.next_offset is not None:
        console.print(f"[bright_black]more: --offset {page.next_offset}[/]")


@dead_letters_app.command("replay")
def dead_letters_replay(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="A service (video) or its dead queue (video.dead)")],
    job_ids: Annotated[
        list[str] | None, typer.Option("--job", help="Replay this job's letter (repeatable)")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every letter")] = False,
) -> None:
    """Send failed jobs back to work: `waiting` again, attempts reset.

    For `notifier`, parked webhook deliveries are sent again (same `webhook-id`).
    """
    if bool(job_ids) == replay_all:
        raise typer.BadParameter("name the jobs with --job ID, or pass --all")
    with ctx.obj.client() as client:
        report = client.replay_dead_letters(queue, job_ids=job_ids or None)
    console.print(f"[green]replayed {len(report.replayed)}[/] from {report.queue}")
    for job_id in report.replayed:
        console.print(f"  {job_id}")
    if report.webhook_ids:
        console.print(f"  webhook deliveries sent again: {', '.join(report.webhook_ids)}")
    for skipped in report.skipped:
        console.print(f"[yellow]  skipped {skipped.get('job_id')}: {skipped.get('reason')}[/]")
    for job_id in report.not_found:
        console.print(f"[yellow]  not in the queue: {job_id}[/]")
    if report.remaining:
        console.print(f"[bright_black]{report.remaining} letter(s) left in {report.queue}[/]")


@app.command()
def demo(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 600,
) -> None:
    """Submit one job of each type and show them progressing side by side."""
    from offload.demo import run_demo  # Pillow is only needed here

    if not run_demo(ctx.obj.settings, console, timeout_s=timeout):
        raise typer.Exit(1)


def main() -> None:
    """Console script entry point: typed errors become a message and exit status 1."""
    try:
        app()
    except ConnectionFailed as exc:
        err_console.print(error_text(exc))
        err_console.print(
            "[yellow]  is Offload running? `make run` starts it; "
            "--url / OFFLOAD_URL point elsewhere[/]"
        )
        sys.exit(1)
    except OffloadError as exc:
        err_console.print(error_text(exc))
        sys.exit(1)
