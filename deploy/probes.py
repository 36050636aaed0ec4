"""Does a dependency answer? Used by `make run` (deploy/run.py) and the container
health checks (deploy/healthcheck.py).

Each probe returns None when the thing answers, or a short reason when it does
not. Client libraries are imported inside the probes: the sandbox's image has
neither aio-pika nor redis, and only needs the HTTP probe.
"""

import asyncio
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit


def redacted(url: str) -> str:
    """The URL with its password replaced by `***`, fit to print: each URL of a list (a
    RabbitMQ cluster's), and a Redis Cluster URL's `user:password@host:port,host:port`."""
    if url.count("://") > 1:
        return ",".join(redacted(part.strip()) for part in url.split(","))
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    netloc = f"{credentials.partition(':')[0]}:***@{hosts}"
    return urlunsplit(parts._replace(netloc=netloc))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def rabbitmq_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """Open and close an AMQP connection: proves the broker, the credentials and the vhost.

    For a cluster (comma-separated node URLs) one answering node is enough: the
    services' connections move to whichever node answers.
    """
    import aio_pika

    async def connect(node: str) -> None:
        connection = await aio_pika.connect(node, timeout=timeout_s)
        await connection.close()

    reasons = []
    for node in [part.strip() for part in url.split(",") if part.strip()]:
        try:
            asyncio.run(asyncio.wait_for(connect(node), timeout_s + 1))
        except Exception as exc:  # any failure is the answer we report
            reasons.append(_reason(exc))
        else:
            return None
    return "; ".join(reasons) if len(reasons) > 1 else reasons[0] if reasons else "no URL"


def redis_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """PING must answer PONG (on a Redis Cluster: from one of the URL's nodes at least)."""
    import redis

    if urlsplit(url).scheme.endswith("+cluster"):
        return _cluster_problem(url, timeout_s)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        if not client.ping():
            return "PING did not answer PONG"
    except Exception as exc:
        return _reason(exc)
    finally:
        client.close()
    return None


def _cluster_problem(url: str, timeout_s: float) -> str | None:
    from offload_runtime.redis import cluster_nodes

    try:
        nodes = cluster_nodes(url)
    except ValueError as exc:
        return _reason(exc)
    scheme = "rediss" if urlsplit(url).scheme.startswith("rediss") else "redis"
    credentials = urlsplit(url).netloc.rpartition("@")[0]
    problems = []
    for host, port in nodes:
        node_url = f"{scheme}://{credentials + '@' if credentials else ''}{host}:{port}"
        problem = redis_problem(node_url, timeout_s)
        if problem is None:
            return None
        problems.append(f"{host}:{port}: {problem}")
    return "no node answers: " + "; ".join(problems)


def http_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """A GET must answer 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return _reason(exc)
    return None if 200 <= status < 300 else f"HTTP {status}"
