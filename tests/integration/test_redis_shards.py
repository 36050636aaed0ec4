"""A deployment's shard count is fixed at its first start; a service with another refuses."""

import uuid

from offload_runtime.keys import RedisKeys
from offload_runtime.redis import check_shard_count, connect_redis
from tests.support.infra import Infra
from tests.support.processes import ServiceProcess
from tests.support.serving import free_port


def _exit_code(process: ServiceProcess, timeout: float = 30) -> int:
    assert process.process is not None
    return process.process.wait(timeout)


async def test_services_with_another_shard_count_than_the_deployments_refuse_to_start(
    infra: Infra,
) -> None:
    prefix = f"{infra.redis_prefix}shards-{uuid.uuid4().hex[:8]}:"
    client = connect_redis(infra.redis_url)
    try:
        # The deployment's first start records its count (16, the default).
        await check_shard_count(client, RedisKeys(prefix))
        assert await client.get(RedisKeys(prefix).shard_count) == "16"
        settings = {
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": infra.redis_url,
            "redis_prefix": prefix,
            "redis_shards": 8,
            "log_format": "console",
        }
        # (The gateway, as every service, checks with `check_shard_count` at start-up.)
        gateway = ServiceProcess(
            "offload_gateway", settings=settings | {"gateway_port": free_port()}
        ).start()
        assert _exit_code(gateway) != 0, gateway.logs()
        assert (
            "OFFLOAD_REDIS_SHARDS is 8 here, but this deployment's Redis was created "
            "with 16 shards" in gateway.logs()
        )
        # Nothing changed: the deployment keeps its count.
        assert await client.get(RedisKeys(prefix).shard_count) == "16"
    finally:
        await client.delete(RedisKeys(prefix).shard_count)
        await client.aclose()


def test_a_cluster_address_with_no_reachable_node_is_a_clear_start_up_error(
    infra: Infra,
) -> None:
    closed = free_port()
    gateway = ServiceProcess(
        "offload_gateway",
        settings={
            "rabbitmq_url": infra.rabbitmq_url,
            "redis_url": f"redis+cluster://127.0.0.1:{closed}",
            "gateway_port": free_port(),
            "log_format": "console",
        },
    ).start()
    assert _exit_code(gateway) != 0
    assert "no Redis node answered" in gateway.logs()
    assert f"127.0.0.1:{closed}" in gateway.logs()
