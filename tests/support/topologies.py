"""Remove the queues a test declared under names of its own.

Every quorum queue holds about three of RabbitMQ's file handles until it is
deleted; a broker installed from Debian's packages has 927 to give (`rabbitmqctl
status`, "File Descriptors"). A run's tests declare hundreds of queues for
services named for one test (a harness's `t…`, a notifier space's `nt…`); left in
place until the run's vhost goes, they used up every handle at about 316 queues,
and the broker then stopped answering new connections: the next test hung. So
whoever declares such a topology deletes it when the test is done.
"""

from collections.abc import Iterable, Sequence

import aio_pika

from offload_contracts import topology
from offload_runtime.settings import RetryTier


def service_queue_names(service: str, tiers: Iterable[RetryTier]) -> list[str]:
    """A service's work, retry and dead queues (DESIGN §3)."""
    return [
        topology.work_queue(service),
        *(topology.retry_queue(service, tier.name) for tier in tiers),
        topology.dead_queue(service),
    ]


async def delete_queues(rabbitmq_url: str, names: Sequence[str]) -> None:
    """Delete these queues (one missing is fine), whatever they still hold."""
    if not names:
        return
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for name in dict.fromkeys(names):
            await channel.queue_delete(name)
