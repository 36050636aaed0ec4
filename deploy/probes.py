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
    """The URL with its password replaced by `***`, fit to print (each URL of a list)."""
    if "," in url:
        return ",".join(redacted(part.strip()) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
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
    """PING must answer PONG."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        if not client.ping():
            return "PING did not answer PONG"
    except Exception as exc:
        return _reason(exc)
    finally:
        client.close()
    return None


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
