"""How Offload is run: `make run` (deploy/run.py), the Dockerfile's install step, the
containers' health checks. Real processes, real RabbitMQ and Redis.

There is no Docker engine here; the Dockerfile's `uv sync` commands are run as
written into a scratch environment per service, which is what `docker build`
would do inside the image.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
import redis.asyncio as aioredis

from offload import AsyncOffload, JobStatus
from offload_contracts.topology import WORKER_SERVICES
from tests.support.infra import VHOST_PREFIX, Infra, Rabbitmqctl
from tests.support.make_run import Output, free_ports, make_run_env, running, started_pids
from tests.support.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "notifier", "sandbox", *WORKER_SERVICES)


# --------------------------------------------------------------------------- the Dockerfile


def dockerfile_uv_commands() -> list[list[str]]:
    """The Dockerfile's `uv sync` commands, in order, as argument lists."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    commands = [
        line.split("uv sync", 1)[1]
        for line in text.splitlines()
        if line.startswith("RUN ") and "uv sync" in line
    ]
    assert len(commands) == 2, "expected a dependencies-only sync, then the full sync"
    return [["sync", *command.split()] for command in commands]


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the Dockerfile copies, in a scratch directory (the build stage's /src)."""
    context = tmp_path_factory.mktemp("build-context")
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy2(ROOT / name, context / name)
    return context


def copy_sources(context: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache")
    for name in ("contracts", "services", "client"):
        if not (context / name).exists():
            shutil.copytree(ROOT / name, context / name, ignore=ignore)


def uv_command() -> list[str]:
    """uv as `make install` leaves it: on PATH, or as a module of the base Python."""
    found = shutil.which("uv")
    if found:
        return [found]
    base = [str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "uv"]
    if subprocess.run([*base, "--version"], capture_output=True, timeout=30).returncode == 0:
        return base
    raise AssertionError("uv is needed: `make install` installs it")


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_image_gets_its_own_dependencies_and_no_others(service: str) -> None:
    # The same resolution `uv sync --frozen --package offload-<service> --no-dev` installs.
    exported = subprocess.run(
        [*uv_command(), "export", "--frozen", "--package", f"offload-{service}", "--no-dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    names = {
        line[3:].strip() if line.startswith("-e ") else re.split(r"[=;\s]", line)[0].lower()
        for line in exported.stdout.splitlines()
        if line and not line.startswith((" ", "#"))
    }
    assert f"./services/{service}" in names
    assert ("pillow" in names) == (service == "image")
    assert ("fastapi" in names) == (service in ("gateway", "notifier", "sandbox"))
    assert "aio-pika" in names  # the workers' health check uses it; the runtime needs it anyway
    assert "./services/runtime" in names  # the sandbox too: its HTTP server and logging
    assert "pytest" not in names and "./client" not in names


@pytest.mark.parametrize("service", ["sandbox", "image"])
def test_the_dockerfile_install_steps_give_a_runnable_service(
    service: str, build_context: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    first, second = dockerfile_uv_commands()
    for step, command in enumerate((first, second)):
        if step == 1:
            copy_sources(build_context)  # the Dockerfile copies the code between the two
        args = [arg.replace("${SERVICE}", service).strip('"') for arg in command]
        done = subprocess.run(
            [*uv_command(), *args],
            cwd=build_context,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    # One interpreter answers every question (each start costs a second on a busy box).
    probe = (
        "import importlib.util, json\n"
        f"import offload_{service}.__main__ as entry\n"
        "names = ('PIL', 'fastapi', 'aio_pika', 'pytest', 'offload')\n"
        "found = {n: importlib.util.find_spec(n) is not None for n in names}\n"
        "print(json.dumps({'entry': entry.__file__, **found}))\n"
    )
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr  # its entry point imports with what was installed
    found = json.loads(check.stdout)
    assert found.pop("entry").startswith(str(venv))  # the installed copy, not the source tree
    assert found == {
        "PIL": service == "image",
        "fastapi": service == "sandbox",
        "aio_pika": True,  # the runtime's, which the sandbox serves HTTP with too
        "pytest": False,  # no dev group
        "offload": False,  # nor the client
    }


# --------------------------------------------------------------------------- health checks


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_the_socket_table_counts_only_established_connections() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from healthcheck import established_remote_ports
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:A1B2 0100007F:1628 01 00000000:00000000\n"  # -> 5672 ESTABLISHED
        "   1: 0100007F:A1B3 0100007F:18EB 06 00000000:00000000\n"  # -> 6379 TIME_WAIT
        "   2: 00000000:1F40 00000000:0000 0A 00000000:00000000\n"  # listening on 8000
    )
    assert established_remote_ports([table]) == {5672}


def test_http_health_check_passes_on_2xx_and_fails_clearly_otherwise() -> None:
    ok = healthcheck("http", "http://127.0.0.1:1/healthz")
    assert ok.returncode == 1
    assert "unhealthy: http://127.0.0.1:1/healthz" in ok.stderr
    assert healthcheck("bogus").returncode == 2


async def test_http_health_check_against_a_running_service() -> None:
    from tests.support.sandbox import running_sandbox

    async with running_sandbox() as sandbox:
        good = await asyncio.to_thread(healthcheck, "http", sandbox.url("/healthz"))
        missing = await asyncio.to_thread(healthcheck, "http", sandbox.url("/no-such-page"))
    assert good.returncode == 0, good.stderr
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


async def test_worker_health_check_needs_both_servers_to_answer(infra: Infra) -> None:
    # This process holds a connection to each, as a worker does.
    connection = await aio_pika.connect(infra.rabbitmq_url)
    client = aioredis.from_url(infra.redis_url)
    await client.ping()
    try:
        env = {"OFFLOAD_RABBITMQ_URL": infra.rabbitmq_url, "OFFLOAD_REDIS_URL": infra.redis_url}
        good = await asyncio.to_thread(healthcheck, "worker", env=env)
        dead_port = free_port()
        broken = {**env, "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{dead_port}/0"}
        bad = await asyncio.to_thread(healthcheck, "worker", env=broken)
    finally:
        await connection.close()
        await client.aclose()
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1
    assert f"no established connection to Redis (port {dead_port})" in bad.stderr
    assert f"Redis at redis://127.0.0.1:{dead_port}/0 does not answer" in bad.stderr
    assert "RabbitMQ" not in bad.stderr


async def test_worker_health_check_takes_a_cluster_url_one_answering_node_is_enough(
    infra: Infra,
) -> None:
    connection = await aio_pika.connect(infra.rabbitmq_url)
    client = aioredis.from_url(infra.redis_url)
    await client.ping()
    parts = urlsplit(infra.rabbitmq_url)
    dead = urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{free_port()}"))
    try:
        env = {"OFFLOAD_RABBITMQ_URL": f"{dead},{infra.rabbitmq_url}"}
        good = await asyncio.to_thread(
            healthcheck, "worker", env={**env, "OFFLOAD_REDIS_URL": infra.redis_url}
        )
        only_dead = {"OFFLOAD_RABBITMQ_URL": dead, "OFFLOAD_REDIS_URL": infra.redis_url}
        bad = await asyncio.to_thread(healthcheck, "worker", env=only_dead)
    finally:
        await connection.close()
        await client.aclose()
    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1 and "no established connection to RabbitMQ" in bad.stderr


# --------------------------------------------------------------------------- make run


def run_env(**overrides: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(overrides)
    return env


def test_make_run_says_how_to_start_what_does_not_answer(infra: Infra) -> None:
    dead_port = free_port()
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "run.py")],
        cwd=ROOT,
        env=run_env(
            OFFLOAD_RABBITMQ_URL=infra.rabbitmq_url,
            OFFLOAD_REDIS_URL=f"redis://127.0.0.1:{dead_port}/0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"Redis at redis://127.0.0.1:{dead_port}/0:" in done.stderr
    assert "  RabbitMQ at" not in done.stderr  # that one answers
    for instruction in (
        "rabbitmq-server -detached",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379",
        "brew services start rabbitmq redis",
        "docker compose up -d rabbitmq redis",
        "OFFLOAD_RABBITMQ_URL and OFFLOAD_REDIS_URL",
    ):
        assert instruction in done.stderr
    assert "started (pid=" not in done.stdout  # nothing was started


def test_the_make_run_banner_lists_every_key() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        from run import RunSettings, banner
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    settings = RunSettings(api_keys="k1=acme,k2=globex,k3=acme", admin_keys="ops-1,ops-2")
    lines = banner(settings, {"ai": 1}).splitlines()
    assert [line.strip() for line in lines if "key " in line] == [
        "API key   k1  (tenant acme)",
        "API key   k2  (tenant globex)",
        "API key   k3  (tenant acme)",
        "admin key ops-1",
        "admin key ops-2",
    ]
    assert any("Authorization: Bearer k1" in line for line in lines)  # the examples' key


def test_make_run_refuses_a_bad_scale() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "run.py"), "--scale", "video=lots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "VIDEO must be a number of processes, got 'lots'" in done.stderr


@pytest.fixture
def own_vhost(infra: Infra) -> Iterator[str]:
    """A vhost of its own: these workers must not take other tests' jobs."""
    ctl = Rabbitmqctl()
    vhost = f"{VHOST_PREFIX}{os.getpid()}-makerun-{uuid.uuid4().hex[:6]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    base = infra.rabbitmq_url.rsplit("/", 1)[0]
    yield f"{base}/{vhost}"
    ctl("delete_vhost", vhost)


@pytest.fixture
async def make_run(
    infra: Infra, own_vhost: str, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Output, dict[str, int]]]:
    ports = free_ports()
    env = make_run_env(
        own_vhost,
        infra,
        ports,
        tmp_path / "storage",
        OFFLOAD_API_KEYS="dev-key=dev",
        OFFLOAD_ADMIN_KEYS="dev-admin-key",
        OFFLOAD_SHUTDOWN_GRACE_S="3",
        OFFLOAD_LOG_FORMAT="console",
        OFFLOAD_SANDBOX_LLM_TTFT_MS="20",
        OFFLOAD_SANDBOX_LLM_TOKENS_PER_S="500",
    )
    command = [
        sys.executable,
        str(ROOT / "deploy" / "run.py"),
        *("--scale", "ai=2", "--scale", "research=0", "--scale", "video=0", "--scale", "image=0"),
    ]
    async with running(command, env) as (process, output):
        yield process, output, ports


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_make_run_starts_every_process_serves_a_job_and_stops_on_ctrl_c(
    make_run: tuple[asyncio.subprocess.Process, Output, dict[str, int]], own_vhost: str
) -> None:
    process, output, ports = make_run
    await output.wait_for("Offload is running", timeout=90)
    pids = started_pids(output.text)
    assert sorted(pids) == ["ai.1", "ai.2", "gateway.1", "notifier.1", "sandbox.1"]
    banner = output.text[output.text.index("Offload is running") :]
    assert f"http://127.0.0.1:{ports['gateway']}" in banner
    assert "API key   dev-key  (tenant dev)" in banner
    assert f"curl -s -X POST http://127.0.0.1:{ports['gateway']}/v1/jobs" in banner

    # Both ai processes consume from ai.jobs (the workers may still be starting).
    connection = await aio_pika.connect(own_vhost)
    try:
        channel = await connection.channel()
        for _ in range(300):
            queue = await channel.declare_queue("ai.jobs", passive=True)
            if queue.declaration_result.consumer_count == 2:
                break
            await asyncio.sleep(0.1)
        assert queue.declaration_result.consumer_count == 2
    finally:
        await connection.close()

    async with AsyncOffload(f"http://127.0.0.1:{ports['gateway']}", api_key="dev-key") as client:
        job = await client.submit("ai.generate", {"prompt": "Hello from make run"})
        # The gateway's links name the notifier on its OFFLOAD_NOTIFIER_PORT.
        assert job.links["events"] == (
            f"http://127.0.0.1:{ports['notifier']}/v1/jobs/{job.id}/events"
        )
        done = await client.wait(job.id, timeout_s=60, poll_interval_s=3600)  # SSE only
    assert done.status is JobStatus.COMPLETED and done.result and done.result["text"]

    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert await asyncio.wait_for(process.wait(), 40) == 0
    await output.close()
    assert not [name for name, pid in pids.items() if alive(pid)]
    lines = output.lines
    stopped = {
        name: i for i, line in enumerate(lines) for name in pids if f"{name} stopped" in line
    }
    sandbox_told = next(i for i, line in enumerate(lines) if "SIGTERM to sandbox.1" in line)
    # The providers stay up until the workers have finished.
    assert stopped["ai.1"] < sandbox_told and stopped["ai.2"] < sandbox_told
