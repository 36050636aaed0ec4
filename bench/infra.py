"""A private RabbitMQ vhost and Redis prefix for one benchmark run, removed afterwards."""

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

from offload_runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class BenchInfra:
    rabbitmq_url: str
    redis_url: str
    redis_prefix: str


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def bench_infra(name: str) -> Iterator[BenchInfra]:
    base = RuntimeSettings()
    vhost = f"offload-bench-{name}-{uuid.uuid4().hex[:6]}"
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    parts = urlsplit(base.rabbitmq_url)
    prefix = f"offload-bench:{vhost}:"
    try:
        yield BenchInfra(urlunsplit(parts._replace(path="/" + vhost)), base.redis_url, prefix)
    finally:
        _ctl("delete_vhost", vhost)
        client = redis.Redis.from_url(base.redis_url)
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            client.delete(key)
        client.close()
