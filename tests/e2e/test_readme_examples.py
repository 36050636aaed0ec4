"""The README's quick start and HTTP API examples, run as written against `make run`.

The shell blocks are read from README.md itself (those marked `run as written by
tests/e2e/test_readme_examples.py`), so the README and this test cannot drift
apart. `make run` is the Makefile's own target, with its defaults; the test only
moves it to free ports (and the blocks' `127.0.0.1:800x` with it), gives it its
own vhost, Redis prefix and storage, and makes the sandbox providers quick.

Each block runs in bash from the checkout, with `set -euo pipefail` and curl
told to fail on an HTTP error (`--fail-with-body`): any refused request, failed
job (`--watch`, `make demo`) or broken pipe fails the test.
"""

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.infra import Infra
from tests.support.make_run import ROOT, Output, free_ports, make_run_env, running
from tests.support.ops import own_vhost
from tests.support.waiting import wait_until

MARKER = "<!-- run as written by tests/e2e/test_readme_examples.py, against make run -->"
README_PORTS = {"gateway": 8000, "notifier": 8001, "sandbox": 8002}
PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --show-error --max-time 60 "$@"; }
"""


def readme_blocks() -> list[str]:
    """The marked shell blocks of README.md, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(re.escape(MARKER) + r"\n```sh\n(.*?)```", text, flags=re.DOTALL)


@dataclass
class MakeRun:
    ports: dict[str, int]
    output: Output
    env: dict[str, str]

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    async def bash(self, block: str, timeout: float = 90) -> tuple[int, str, str]:
        for service, port in README_PORTS.items():
            block = block.replace(f"127.0.0.1:{port}", f"127.0.0.1:{self.ports[service]}")
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            PRELUDE + block,
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


def shell_env(gateway_url: str, bin_dir: Path) -> dict[str, str]:
    """A user's shell beside `make run`: `uv` on PATH, the gateway where `make run` put it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    if shutil.which("uv") is None:  # `make install` may have put uv beside Python only
        shim = bin_dir / "uv"
        shim.write_text(f'#!/bin/sh\nexec "{sys.base_prefix}/bin/python3" -m uv "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["OFFLOAD_URL"] = gateway_url
    return env


@pytest.fixture
async def make_run(infra: Infra, tmp_path: Path) -> AsyncIterator[MakeRun]:
    ports = free_ports()
    async with own_vhost(infra) as own:
        env = make_run_env(
            own.rabbitmq_url,
            own,
            ports,
            tmp_path / "storage",
            # Quick providers: the examples' jobs finish in seconds, not minutes.
            OFFLOAD_SANDBOX_LLM_TTFT_MS="20",
            OFFLOAD_SANDBOX_LLM_TOKENS_PER_S="400",
            OFFLOAD_SANDBOX_VIDEO_RENDER_S="3",
            OFFLOAD_SHUTDOWN_GRACE_S="2",
        )
        for name in ("OFFLOAD_API_KEYS", "OFFLOAD_ADMIN_KEYS", "OFFLOAD_WEBHOOK_ALLOW_PRIVATE"):
            env.pop(name, None)  # the Makefile's defaults, as `make run` has them
        async with running(["make", "--no-print-directory", "run"], env) as (_process, output):
            await output.wait_for("Offload is running", timeout=120)
            bin_dir = tmp_path / "bin"
            bin_dir.mkdir()
            yield MakeRun(ports, output, shell_env(f"http://127.0.0.1:{ports['gateway']}", bin_dir))


def json_objects(text: str) -> list[Any]:
    """Every JSON object printed, in order (curl prints answers without a newline after)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            at += 1
            continue
        found.append(value)
    return found


async def webhooks_received(make_run: MakeRun, kind: str, timeout: float = 20) -> list[Any]:
    async with httpx.AsyncClient(base_url=make_run.url("sandbox")) as http:

        async def received() -> list[Any]:
            hooks: list[Any] = (await http.get("/v1/sandbox/webhooks")).json()["webhooks"]
            return hooks

        return await wait_until(
            received,
            lambda hooks: any(hook["body"]["type"] == kind for hook in hooks),
            timeout=timeout,
            what=f"a {kind} webhook",
            interval=0.2,
        )


async def test_the_readme_examples_work_as_written(make_run: MakeRun) -> None:
    head = ROOT / "head.bin"  # the API examples' ranged download lands in the checkout
    had_head = head.exists()
    quick_start, api = readme_blocks()
    try:
        code, out, err = await make_run.bash(quick_start)
        assert code == 0, f"quick start failed:\n{out[-3000:]}\n{err[-3000:]}"
        assert "completed" in out  # the demo's jobs and the watched haiku

        code, out, err = await make_run.bash(api)
        assert code == 0, f"API examples failed:\n{out[-3000:]}\n{err[-3000:]}"
    finally:
        if not had_head:
            head.unlink(missing_ok=True)
    answers = json_objects(out)
    uploads = [a for a in answers if "sha256" in a and "content_type" in a]
    assert [upload["content_type"] for upload in uploads] == ["image/jpeg"]  # --data-binary
    assert "event: completed" in out  # the job's events, read at its links.events
    assert any(a.get("type") == "video.generate" and a["status"] == "cancelled" for a in answers)
    hooks = await webhooks_received(make_run, "video.generate.cancelled")
    cancelled = next(h for h in hooks if h["body"]["type"] == "video.generate.cancelled")
    assert cancelled["headers"]["webhook-signature"].startswith("v1,")
