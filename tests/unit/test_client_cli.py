"""The `offload` CLI's own behaviour: input parsing, configuration, error messages.

What it does against real services is in tests/e2e/test_client_e2e.py.
"""

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from offload.cli import parse_input

ROOT = Path(__file__).resolve().parents[2]


def test_input_is_inline_json_a_file_or_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_input('{"prompt": "hi"}') == {"prompt": "hi"}
    spec = tmp_path / "in.json"
    spec.write_text(json.dumps({"question": "why?"}))
    assert parse_input(f"@{spec}") == {"question": "why?"}
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"duration_s": 4}'))
    assert parse_input("-") == {"duration_s": 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "--input is not JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ("@/no/such/file.json", "cannot read /no/such/file.json"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        parse_input(text)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", **env}  # no OFFLOAD_* from the outer environment
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        cwd=ROOT,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_without_an_api_key_the_cli_says_which_variable_to_set() -> None:
    done = cli("status", "some-job")
    assert done.returncode == 1
    assert "OFFLOAD_API_KEY" in done.stderr and "--api-key" in done.stderr


def test_an_unreachable_gateway_is_reported_with_a_hint() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    from_env = cli("status", "j1", OFFLOAD_URL=url, OFFLOAD_API_KEY="k")
    from_flag = cli("--url", url, "--api-key", "k", "status", "j1")
    for done in (from_env, from_flag):
        assert done.returncode == 1
        assert f"GET {url}/v1/jobs/j1" in done.stderr
        assert "is Offload running? `make run` starts it" in done.stderr


def test_replaying_dead_letters_needs_jobs_or_all() -> None:
    done = cli("dead-letters", "replay", "video", OFFLOAD_API_KEY="k")
    assert done.returncode == 2
    assert "--job ID, or pass --all" in done.stderr


def test_jobs_render_as_a_table_and_a_panel_with_result_files() -> None:
    from rich.console import Console

    from offload.display import job_panel, job_table
    from offload.models import Job

    job = Job.model_validate(
        {
            "id": "j1",
            "type": "image.process",
            "status": "completed",
            "attempt": 1,
            "max_attempts": 3,
            "result": {
                "file": {"id": "f1", "bytes": 2048, "content_type": "image/webp"},
                "files": [{"file": {"id": "f2", "bytes": 100, "content_type": "image/webp"}}],
                "width": 800,
            },
        }
    )
    failed = Job.model_validate(
        {
            "id": "j2",
            "type": "ai.generate",
            "status": "failed",
            "attempt": 3,
            "max_attempts": 3,
            "error": {"type": "permanent", "message": "provider said no", "retryable": False},
        }
    )
    console = Console(record=True, width=200)
    console.print(job_table([job, failed]))
    console.print(job_panel(job))
    console.print(job_panel(failed))
    text = console.export_text()
    assert "j1" in text and "completed" in text and "100%" in text and "1/3" in text
    assert "file f1: 2048 bytes, image/webp" in text and "file f2" in text
    assert "offload download --job j1" in text
    assert "permanent: provider said no" in text
