"""`make run`: every Offload service as its own local process, under honcho.

1. checks that RabbitMQ and Redis answer, and says exactly how to start them if not;
2. starts the processes of deploy/Procfile (gateway, notifier, sandbox, and each
   worker as many times as asked: `make run VIDEO=4 IMAGE=2`), with honcho's
   prefixed, coloured logs;
3. once the gateway answers, prints the URLs, the development API key and a curl;
4. on Ctrl-C, honcho sends SIGTERM to every process: workers stop consuming and
   let in-flight jobs finish within OFFLOAD_SHUTDOWN_GRACE_S, leaving the rest
   unacked for redelivery; the sandbox and the notifier stop after the workers.

Settings come from the same `OFFLOAD_*` variables the services read (the
Makefile sets the `make run` defaults of DESIGN §8).
"""

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from honcho import manager as honcho_manager
from honcho.environ import expand_processes, parse_procfile
from honcho.manager import Manager
from honcho.printer import Message, Printer
from probes import http_problem, rabbitmq_problem, redacted, redis_problem
from pydantic import Field

from offload_runtime.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = Path(__file__).resolve().parent / "Procfile"
HTTP_SERVICES = ("gateway", "notifier", "sandbox")
SCALABLE = ("ai", "research", "video", "image")


class RunSettings(WorkerSettings):
    """What `make run` needs to know: the shared settings plus the HTTP services' ports."""

    gateway_port: int = Field(default=8000, description="The gateway's port.")
    notifier_port: int = Field(default=8001, description="The notifier's port.")
    sandbox_port: int = Field(default=8002, description="The sandbox's port.")

    def port_of(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))


def how_to_start(settings: RunSettings, problems: dict[str, str]) -> str:
    lines = ["", "Offload needs RabbitMQ and Redis, and not everything answers:"]
    for name, reason in problems.items():
        url = settings.rabbitmq_url if name == "RabbitMQ" else settings.redis_url
        lines.append(f"  {name} at {redacted(url)}: {reason}")
    lines += [
        "",
        "Start them, then run `make run` again. On Debian or Ubuntu (as root, or with sudo):",
        "  apt-get install -y rabbitmq-server redis-server     # once",
        "  rabbitmq-server -detached",
        '  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
        "With Homebrew (macOS):",
        "  brew install rabbitmq redis                         # once",
        "  brew services start rabbitmq redis",
        "With Docker:",
        "  docker compose up -d rabbitmq redis",
        "RabbitMQ takes a few seconds to accept connections after it starts.",
        "Or point Offload at running servers with OFFLOAD_RABBITMQ_URL and OFFLOAD_REDIS_URL.",
        "",
    ]
    return "\n".join(lines)


def check_infra(settings: RunSettings) -> str | None:
    """None when both answer, else what to tell the user."""
    problems = {
        name: reason
        for name, reason in (
            ("RabbitMQ", rabbitmq_problem(settings.rabbitmq_url)),
            ("Redis", redis_problem(settings.redis_url)),
        )
        if reason is not None
    }
    return how_to_start(settings, problems) if problems else None


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def parse_scale(values: list[str]) -> dict[str, int]:
    """`["video=4", "image=2"]` → counts; refuses unknown services and non-numbers."""
    counts: dict[str, int] = {}
    for value in values:
        for pair in value.split(","):
            name, _, count = pair.partition("=")
            name = name.strip().lower()
            if name not in SCALABLE:
                raise SystemExit(
                    f"make run: cannot scale {name!r}; scalable: {', '.join(SCALABLE)}"
                )
            if not count.strip().isdigit():
                raise SystemExit(
                    f"make run: {name.upper()} must be a number of processes, got {count!r}"
                )
            counts[name] = int(count)
    return counts


def banner(settings: RunSettings, started: dict[str, int]) -> str:
    tenants_by_key = settings.key_ring.tenants_by_key
    key = next(iter(tenants_by_key), "<none>")
    keys = [f"   API key   {k}  (tenant {tenant})" for k, tenant in tenants_by_key.items()]
    admins = [f"   admin key {admin}" for admin in sorted(settings.key_ring.admin_keys)]
    gateway = f"http://127.0.0.1:{settings.gateway_port}"
    notifier = f"http://127.0.0.1:{settings.notifier_port}"
    workers = "  ".join(f"{name}×{started[name]}" for name in SCALABLE if name in started)
    return "\n".join(
        [
            "",
            "━" * 78,
            " Offload is running",
            f"   gateway   {gateway}",
            f"   notifier  {notifier}      (SSE: /v1/jobs/<id>/events)",
            f"   sandbox   http://127.0.0.1:{settings.sandbox_port}      (stand-in LLM and video)",
            f"   workers   {workers or 'none'}      (scale: make run VIDEO=4 IMAGE=2)",
            f"   RabbitMQ  {redacted(settings.rabbitmq_url)}",
            f"   Redis     {redacted(settings.redis_url)}",
            f"   storage   {settings.storage_dir}",
            "",
            *(keys or ["   API key   none: set OFFLOAD_API_KEYS=key=tenant"]),
            *(admins or ["   admin key none: set OFFLOAD_ADMIN_KEYS"]),
            "",
            " Try it:",
            f"   curl -s -X POST {gateway}/v1/jobs -H 'Authorization: Bearer {key}' \\",
            "     -H 'Content-Type: application/json' \\",
            '     -d \'{"type": "ai.generate", "input": {"prompt": "A haiku about queues"}}\'',
            f"   curl -s {gateway}/v1/jobs/<id> -H 'Authorization: Bearer {key}'",
            f"   curl -N {notifier}/v1/jobs/<id>/events -H 'Authorization: Bearer {key}'",
            f"   OFFLOAD_API_KEY={key} uv run offload submit ai.generate \\",
            '     --input \'{"prompt": "Write a haiku"}\' --watch',
            "   make demo      (in another terminal: one job of each type, side by side)",
            "",
            f" Ctrl-C stops everything: workers get {settings.shutdown_grace_s:g}s to finish"
            " in-flight jobs, the rest go back to their queue.",
            "━" * 78,
            "",
        ]
    )


class GracefulManager(Manager):
    """honcho's Manager, stopping the processes in order.

    Workers are told to stop first (with the gateway, which only takes new
    work); the sandbox and the notifier stop once every worker has exited,
    because in-flight jobs still call the providers and still emit events while
    they finish. honcho kills whatever is left `KILL_WAIT` seconds later.
    """

    LAST_TO_STOP = ("sandbox", "notifier")
    _stopping = False

    def terminate(self) -> None:
        # Called on SIGINT/SIGTERM, and by honcho's loop when any process exits.
        if self._stopping:
            return
        self._stopping = True
        threading.Thread(target=self._stop_in_order, daemon=True).start()

    def _stop_in_order(self) -> None:
        def last(name: str) -> bool:
            return name.split(".")[0] in self.LAST_TO_STOP

        self._signal(name for name in self._processes if not last(name))
        while any(
            "returncode" not in info for name, info in self._processes.items() if not last(name)
        ):
            time.sleep(0.1)
        self._signal(name for name in self._processes if last(name))

    def _signal(self, names: Iterable[str]) -> None:
        for name in names:
            info = self._processes[name]
            if "returncode" not in info and info.get("pid"):
                self._system_print(f"sending SIGTERM to {name} (pid {info['pid']})\n")
                with contextlib.suppress(ProcessLookupError):
                    self._procmgr.terminate(info["pid"])


class ResilientPrinter(Printer):
    """honcho's printer, which carries on silently when its output goes away.

    With `make run | tee log`, Ctrl-C also ends `tee` (BrokenPipeError); a closed
    terminal window makes writes fail with EIO. Either, raised inside honcho's
    loop, would leave every service running unsupervised; they must still be
    stopped, so output is dropped instead.
    """

    def write(self, message: Message) -> None:
        try:
            super().write(message)
        except OSError:
            self.output = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def announce_when_ready(
    settings: RunSettings, started: dict[str, int], stop: threading.Event
) -> None:
    # Ready, not merely alive: until the gateway's broker link is up it answers
    # submissions with 503, and the banner invites the user to submit at once.
    url = f"http://127.0.0.1:{settings.gateway_port}/readyz"
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        if http_problem(url, timeout_s=1.0) is None:
            with contextlib.suppress(OSError):
                sys.stdout.write(banner(settings, started))
                sys.stdout.flush()
            return
        stop.wait(0.5)


def kill_all(manager: Manager) -> None:
    """SIGKILL every process still running, without printing (the output may be gone)."""
    for info in manager._processes.values():
        if "returncode" not in info and info.get("pid"):
            with contextlib.suppress(OSError):
                os.killpg(info["pid"], signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scale", action="append", default=[], help="service=count, e.g. video=4 (repeatable)"
    )
    parser.add_argument(
        "--skip-infra-check", action="store_true", help="do not check RabbitMQ and Redis first"
    )
    args = parser.parse_args(argv)
    scale = parse_scale(args.scale)
    settings = RunSettings()

    if not args.skip_infra_check:
        trouble = check_infra(settings)
        if trouble:
            sys.stderr.write(trouble)
            return 2

    procfile = parse_procfile(PROCFILE.read_text())
    processes: OrderedDict[str, str] = OrderedDict()
    for name, command in procfile.processes.items():
        if scale.get(name, 1) == 0:
            continue
        module = command.split()[-1]
        if importlib.util.find_spec(f"{module}.__main__") is None:
            # Services land one by one while Offload is being built; say so plainly.
            print(f"make run: not starting {name}: `python -m {module}` does not exist yet")
            continue
        if name in HTTP_SERVICES and port_taken(settings.port_of(name)):
            sys.stderr.write(
                f"make run: port {settings.port_of(name)} ({name}) is already in use; is another "
                f"`make run` still going? Stop it, or set OFFLOAD_{name.upper()}_PORT.\n"
            )
            return 2
        processes[name] = command
    if not processes:
        sys.stderr.write("make run: nothing to start\n")
        return 2

    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    # The services must run on this environment's Python, whatever PATH says.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"

    # honcho SIGKILLs whatever still runs 5 s after its SIGTERM; give workers their
    # grace period first (a killed worker's jobs are redelivered, but slower).
    honcho_manager.KILL_WAIT = settings.shutdown_grace_s + 5

    manager = GracefulManager(ResilientPrinter(sys.stdout))
    counts = {name: scale.get(name, 1) for name in processes}
    for params in expand_processes(processes, concurrency=counts, env=env):
        manager.add_process(params.name, params.cmd, quiet=params.quiet, env=params.env, cwd=ROOT)

    # honcho stops everything on SIGINT and SIGTERM; a closed terminal (SIGHUP) must too.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: manager.terminate())

    stop = threading.Event()
    if "gateway" in processes:
        threading.Thread(
            target=announce_when_ready, args=(settings, counts, stop), daemon=True
        ).start()
    try:
        manager.loop()
    except BaseException:
        kill_all(manager)  # never leave services running without their supervisor
        raise
    finally:
        stop.set()
    code = int(manager.returncode or 0)
    # 130/143: stopped by Ctrl-C or SIGTERM, as asked; anything else is a service's exit.
    return 0 if code in (130, 143) else code


if __name__ == "__main__":
    sys.exit(main())
