"""Container health checks for docker-compose.yml (copied into every image as /app).

    python /app/healthcheck.py http http://127.0.0.1:8000/healthz
    python /app/healthcheck.py worker

`http`: the service's own endpoint answers 2xx.

`worker`: a worker has no HTTP port, so the check asks two things. First, does
this container hold an established TCP connection to RabbitMQ and to Redis?
A container has its own network namespace, so /proc/net/tcp lists only the
worker's sockets: a worker that lost its broker or Redis connection (and has
not yet recovered it) is unhealthy. Second, do RabbitMQ and Redis answer this
container right now (an AMQP login, a Redis PING)? Exit status 0 is healthy,
1 unhealthy, with the reason on stderr (Docker keeps it in `docker inspect`).
"""

import sys
from pathlib import Path
from urllib.parse import urlsplit

from probes import http_problem, rabbitmq_problem, redacted, redis_problem

_ESTABLISHED = "01"


def established_remote_ports(tables: list[str]) -> set[int]:
    """Remote ports of ESTABLISHED connections in /proc/net/tcp-format tables."""
    ports: set[int] = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _ESTABLISHED:
                continue
            _, _, port_hex = fields[2].rpartition(":")
            ports.add(int(port_hex, 16))
    return ports


def _proc_tables() -> list[str]:
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(name)
        if path.exists():
            found.append(path.read_text())
    return found


def worker_problems(rabbitmq_url: str, redis_url: str, tables: list[str]) -> list[str]:
    """Why a worker is unhealthy (empty when it is healthy)."""
    problems = []
    # Read the socket table before probing, so the probes' own connections do not count.
    connected = established_remote_ports(tables)
    for name, url, default_port in (
        ("RabbitMQ", rabbitmq_url, 5672),
        ("Redis", redis_url, 6379),
    ):
        if urlsplit(url).scheme.endswith("+cluster"):
            continue  # a cluster client talks to the masters it finds, not to named ports
        # A RabbitMQ cluster's URL names every node: a connection to any one will do.
        ports = sorted({urlsplit(node.strip()).port or default_port for node in url.split(",")})
        if not connected.intersection(ports):
            shown = ", ".join(str(port) for port in ports)
            problems.append(f"no established connection to {name} (port {shown})")
    for name, url, problem in (
        ("RabbitMQ", rabbitmq_url, rabbitmq_problem(rabbitmq_url)),
        ("Redis", redis_url, redis_problem(redis_url)),
    ):
        if problem:
            problems.append(f"{name} at {redacted(url)} does not answer: {problem}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        problem = http_problem(argv[1])
        if problem:
            print(f"unhealthy: {argv[1]}: {problem}", file=sys.stderr)
            return 1
        return 0
    if argv == ["worker"]:
        from offload_runtime.settings import RuntimeSettings

        settings = RuntimeSettings()
        problems = worker_problems(settings.rabbitmq_url, settings.redis_url, _proc_tables())
        for problem in problems:
            print(f"unhealthy: {problem}", file=sys.stderr)
        return 1 if problems else 0
    print("usage: healthcheck.py http URL | healthcheck.py worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
