"""A private RabbitMQ vhost and Redis prefix for one benchmark run, removed afterwards.

The Redis is `OFFLOAD_REDIS_URL`'s unless the benchmark names another (one
node, or a Redis Cluster as `redis+cluster://host:port,...`). Both names carry
the run's pid, so a later run removes what a killed run left behind (its pid
is gone) without touching a run that is still going. Removing them at the end
never fails the benchmark: a broker too busy to delete a vhost in time gets a
warning, and the next run tidies up.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster

from offload_runtime.settings import RuntimeSettings

VHOST_PREFIX = "offload-bench-"
REDIS_PREFIX = "offload-bench:"


@dataclass(frozen=True)
class BenchInfra:
    rabbitmq_url: str
    redis_url: str
    redis_prefix: str


def _ctl(*args: str, timeout_s: float = 60) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout_s
    )
    return done.stdout


# The test suite's support has the same check (`tests/support/infra.py`). The
# benchmarks import from the tests only the cluster launcher (`runner_throughput
# --cluster`); seven lines are not worth tying this module to the tests' support.
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    """The pid in `offload-bench-<name>-<pid>-<hex>` (None for names without one)."""
    parts = name.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _remove_stale(redis_url: str) -> None:
    try:
        names = _ctl("list_vhosts", "--quiet", "--no-table-headers").split()
    except (subprocess.SubprocessError, OSError):
        return
    for name in names:
        pid = _owner(name) if name.startswith(VHOST_PREFIX) else None
        if pid is not None and not _pid_alive(pid):
            _delete(name, redis_url, f"{REDIS_PREFIX}{name}:")


def _delete(vhost: str, redis_url: str, prefix: str) -> None:
    try:
        _ctl("delete_vhost", vhost, timeout_s=120)
    except (subprocess.SubprocessError, OSError) as exc:
        print(
            f"warning: could not delete vhost {vhost} ({exc}); the next run will", file=sys.stderr
        )
    client = _sync_client(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            client.delete(key)
    finally:
        client.close()


def _sync_client(url: str) -> "redis.Redis | RedisCluster":
    """A blocking client of one node or, for `redis+cluster://host:port,...`, of the cluster."""
    parts = urlsplit(url)
    if not parts.scheme.endswith("+cluster"):
        return redis.Redis.from_url(url)
    credentials, _, addresses = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for address in filter(None, addresses.split(",")):
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return RedisCluster(
        startup_nodes=nodes, username=unquote(username) or None, password=unquote(password) or None
    )


@contextmanager
def bench_infra(name: str, *, redis_url: str | None = None) -> Iterator[BenchInfra]:
    base = RuntimeSettings()
    _remove_stale(base.redis_url)
    redis_url = redis_url or base.redis_url
    vhost = f"{VHOST_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(base.rabbitmq_url)
    prefix = f"{REDIS_PREFIX}{vhost}:"
    try:
        yield BenchInfra(urlunsplit(parts._replace(path="/" + vhost)), redis_url, prefix)
    finally:
        _delete(vhost, redis_url, prefix)
