"""A fixed-rate probe of a light endpoint: what a user's status read feels like.

Open loop: request k is due at `start + k / rate` and its latency counts from
that moment, not from when it was actually sent. A server that stalls for a
second therefore shows a second of latency on every request that fell due
meanwhile, instead of hiding them (no coordinated omission).
"""

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class ProbeResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


async def probe(
    url: str,
    *,
    headers: dict[str, str],
    rate_per_s: float,
    stop: asyncio.Event,
    max_s: float = 600,
    timeout_s: float = 30,
) -> ProbeResult:
    """GET `url` `rate_per_s` times a second until `stop` is set (or `max_s` passes).

    Its own session and connection pool, so the probe never waits behind the
    load generator's connections.
    """
    result = ProbeResult()
    interval = 1 / rate_per_s
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def one(due: float) -> None:
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
                    if response.status != 200:
                        result.errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                result.errors += 1
                return
            result.latencies_ms.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter()
        k = 0
        while not stop.is_set() and time.perf_counter() - start < max_s:
            due = start + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            task = asyncio.create_task(one(due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        if pending:
            await asyncio.gather(*pending)
    return result
