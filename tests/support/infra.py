"""Real RabbitMQ and Redis for tests, isolated per run.

Each test run works in its own RabbitMQ vhost and its own Redis key prefix.
Both names carry the run's pid, so a later run removes what a killed run left
behind (its pid is gone) without touching a run that is still going.
"""

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

VHOST_PREFIX = "offload-test-"
REDIS_PREFIX = "offload-test:"


@dataclass(frozen=True)
class Infra:
    rabbitmq_url: str  # with the run's vhost
    redis_url: str
    redis_prefix: str
    vhost: str


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix) :].split("-", 1)[0].split(":", 1)[0])
    except ValueError:
        return None


class Rabbitmqctl:
    """`rabbitmqctl` on this machine, or inside a testcontainers RabbitMQ."""

    def __init__(self, container: object | None = None) -> None:
        self._container = container
        if container is None and shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl is not on PATH: it is needed to create a test vhost")

    def __call__(self, *args: str) -> str:
        if self._container is not None:
            code, out = self._container.exec(["rabbitmqctl", *args])  # type: ignore[attr-defined]
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out!r}")
            return str(out.decode() if isinstance(out, bytes) else out)
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


class InfraUnavailable(RuntimeError):
    pass


def start_infra(rabbitmq_url: str, redis_url: str) -> tuple[Infra, list[object], Rabbitmqctl]:
    """Find (or, with Docker, start) RabbitMQ and Redis; make this run's vhost and prefix."""
    containers: list[object] = []
    container_rabbit = None
    if not (_reachable(rabbitmq_url, 5672) and _reachable(redis_url, 6379)):
        if not _docker_available():
            raise InfraUnavailable(
                f"RabbitMQ ({rabbitmq_url}) or Redis ({redis_url}) is not reachable and there is "
                "no Docker engine for testcontainers. Start them, e.g. on Debian:\n"
                "  rabbitmq-server -detached\n"
                "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' "
                "--appendonly no\n"
                "or set OFFLOAD_RABBITMQ_URL / OFFLOAD_REDIS_URL."
            )
        from testcontainers.rabbitmq import RabbitMqContainer
        from testcontainers.redis import RedisContainer

        if not _reachable(rabbitmq_url, 5672):
            container_rabbit = RabbitMqContainer("rabbitmq:3.13-management").start()
            containers.append(container_rabbit)
            host = container_rabbit.get_container_host_ip()
            port = container_rabbit.get_exposed_port(5672)
            rabbitmq_url = f"amqp://guest:guest@{host}:{port}/"
        if not _reachable(redis_url, 6379):
            container_redis = RedisContainer("redis:7").start()
            containers.append(container_redis)
            host = container_redis.get_container_host_ip()
            redis_url = f"redis://{host}:{container_redis.get_exposed_port(6379)}/0"

    ctl = Rabbitmqctl(container_rabbit)
    remove_stale(ctl, redis_url)
    run = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    vhost = VHOST_PREFIX + run
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(rabbitmq_url)
    url = urlunsplit(parts._replace(path="/" + vhost))
    return Infra(url, redis_url, f"{REDIS_PREFIX}{run}:", vhost), containers, ctl


def remove_stale(ctl: Rabbitmqctl, redis_url: str) -> None:
    """Delete vhosts and Redis keys of earlier runs whose process is gone."""
    for line in ctl("list_vhosts", "--quiet", "--no-table-headers").splitlines():
        name = line.strip()
        if name.startswith(VHOST_PREFIX):
            pid = _owner_pid(name, VHOST_PREFIX)
            if pid is not None and not _pid_alive(pid):
                ctl("delete_vhost", name)
    client = redis.Redis.from_url(redis_url)
    stale: dict[str, bool] = {}
    for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=1000):
        name = key.decode()
        pid = _owner_pid(name, REDIS_PREFIX)
        if pid is not None and stale.setdefault(str(pid), not _pid_alive(pid)):
            client.delete(key)
    client.close()


def stop_infra(infra: Infra, containers: list[object], ctl: Rabbitmqctl) -> None:
    try:
        ctl("delete_vhost", infra.vhost)
    finally:
        client = redis.Redis.from_url(infra.redis_url)
        for key in client.scan_iter(match=f"{infra.redis_prefix}*", count=1000):
            client.delete(key)
        client.close()
        for container in containers:
            container.stop()  # type: ignore[attr-defined]
