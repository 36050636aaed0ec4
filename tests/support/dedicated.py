"""Dedicated RabbitMQ and Redis servers that a reliability test may restart.

The machine's shared servers outlive every run and must stay up, so a test
that restarts a broker or Redis starts its own on other ports, named after the
run's pid; servers left by a killed run are stopped by the next one.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.serving import free_port

NODE_PREFIX = "offloadtest"


def wait_port(port: int, *, up: bool, timeout: float) -> None:
    """Wait until something listens on 127.0.0.1:`port` (`up`) or nothing does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} in {timeout}s")


def _ctl(node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-n", node, *args], capture_output=True, text=True, timeout=timeout
    )


def stop_stale_nodes() -> None:
    """Shut down dedicated nodes whose owning test run is gone."""
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "name" and parts[1].startswith(NODE_PREFIX):
            try:
                pid = int(parts[1][len(NODE_PREFIX) :].split("x", 1)[0])
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                _ctl(f"{parts[1]}@localhost", "shutdown", timeout=30)


class DedicatedRabbit:
    """A RabbitMQ node of this test run's own, on free ports."""

    def __init__(self) -> None:
        stop_stale_nodes()
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"{NODE_PREFIX}{os.getpid()}x{self.port}@localhost"
        self.base = Path(tempfile.mkdtemp(prefix="offload-rabbit-"))
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.base / "env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for child in self.base.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 90) -> None:
        env = {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)
        wait_port(self.port, up=True, timeout=timeout)

    def stop_app(self) -> None:
        """The broker goes away: every connection drops and the port closes (data kept)."""
        _ctl(self.node, "stop_app").check_returncode()
        wait_port(self.port, up=False, timeout=30)

    def start_app(self) -> None:
        _ctl(self.node, "start_app").check_returncode()
        wait_port(self.port, up=True, timeout=60)

    def shutdown(self) -> None:
        _ctl(self.node, "shutdown", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


class DedicatedRedis:
    """A redis-server of this test run's own, with AOF on, restartable."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="offload-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, up=True, timeout=20)

    def kill(self) -> None:
        """Redis dies (SIGKILL): only what AOF wrote survives."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None
        wait_port(self.port, up=False, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            self.process.wait(10)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
