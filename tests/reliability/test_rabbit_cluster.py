"""A three-node RabbitMQ cluster under the services: a node stopped under load loses no job.

The gateway and the worker get every node's URL (`OFFLOAD_RABBITMQ_URL`,
comma-separated) and connect to the first; the quorum queues are declared with
three replicas, so `ai.jobs` keeps a majority when one node stops.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from offload_contracts import topology
from offload_runtime.broker import (
    CONNECTION_LOST,
    connect_robust_nodes,
    declare_service_topology,
    make_broker,
    quorum_size_of,
)
from offload_runtime.settings import parse_retry_tiers
from tests.reliability.outcomes import settle
from tests.support.clusters import RabbitCluster, RabbitNode
from tests.support.infra import Infra
from tests.support.serving import free_port
from tests.support.stack import Stack, running_stack

AI_JOBS = topology.work_queue("ai")
STACK_RETRY_TIERS = "100ms,300ms"


@pytest.fixture
def cluster_url(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A vhost of this test's own on the cluster, as a URL naming all three nodes."""
    yield rabbit_cluster.add_vhost(f"offload-test-cluster-{uuid.uuid4().hex[:8]}")
    # A test that stopped a node starts it again, even when it failed half-way.
    for node in rabbit_cluster.nodes:
        if not node.listening:
            node.start_app()


@contextlib.asynccontextmanager
async def stopped(node: RabbitNode) -> AsyncIterator[None]:
    await asyncio.to_thread(node.stop_app)
    try:
        yield
    finally:
        await asyncio.to_thread(node.start_app)


async def submit_stream(stack: Stack, accepted: list[str], stop: asyncio.Event) -> int:
    """Submit jobs until told to stop; the 202s go to `accepted`; returns how many got 503."""
    unavailable = 0
    while not stop.is_set():
        try:
            answer = await stack.http.post("/v1/jobs", json=stack.ai_job())
        except httpx.TimeoutException:
            unavailable += 1  # no answer is no acceptance
            continue
        if answer.status_code == 202:
            accepted.append(answer.json()["id"])
        elif answer.status_code == 429:
            await asyncio.sleep(0.2)
        else:
            assert answer.status_code == 503, answer.text  # never a 500
            unavailable += 1
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.005)
    return unavailable


async def test_the_node_leading_ai_jobs_stopped_under_load_loses_no_job(
    infra: Infra, rabbit_cluster: RabbitCluster, cluster_url: str
) -> None:
    first = rabbit_cluster.nodes[0]
    async with running_stack(infra, rabbitmq_url=cluster_url, publish_timeout_s=3) as stack:
        vhost = cluster_url.rsplit("/", 1)[1]
        # Both services connected to the first node named, which declared `ai.jobs`
        # and so leads it: stopping it takes their connections and the queue's leader.
        assert rabbit_cluster.queue_leader(vhost, AI_JOBS) is first

        accepted: list[str] = []
        stop = asyncio.Event()
        submitters = [asyncio.create_task(submit_stream(stack, accepted, stop)) for _ in range(4)]
        try:
            async with asyncio.timeout(60):
                while len(accepted) < 100:
                    await asyncio.sleep(0.01)
            async with stopped(first):
                at_stop = len(accepted)
                # Served again without the node: new jobs are accepted, and every job
                # completes while the node stays down.
                async with asyncio.timeout(60):
                    while len(accepted) < at_stop + 100:
                        await asyncio.sleep(0.05)
                stop.set()
                unavailable = sum(await asyncio.gather(*submitters))
                new_leader = rabbit_cluster.queue_leader(vhost, AI_JOBS)
                outcome = await settle(
                    stack.store,
                    accepted,
                    scenario="RabbitMQ cluster: the node leading `ai.jobs` (and serving "
                    "gateway and worker) stopped under load",
                    load=f"4 submitters; node stopped after {at_stop} accepted; "
                    f"{len(accepted)} accepted, {unavailable} answered 503 while "
                    "connections moved",
                )
        finally:
            stop.set()
            await asyncio.gather(*submitters, return_exceptions=True)
        assert new_leader is not first
        stack.assert_settled(outcome)
        assert all(p.process and p.process.poll() is None for p in stack.processes.values())


async def test_the_node_leading_ai_jobs_stopped_while_services_use_another_loses_no_job(
    infra: Infra, rabbit_cluster: RabbitCluster, cluster_url: str
) -> None:
    first, second, _ = rabbit_cluster.nodes
    vhost = cluster_url.rsplit("/", 1)[1]
    # `ai.jobs` declared first through the second node, so the second node leads it; the
    # services then connect to the first node named and declare the same queues again.
    declarer = make_broker(second.url + vhost, service="cluster-test", quorum_size=3)
    try:
        await asyncio.wait_for(declarer.connect(), 30)
        await declare_service_topology(
            declarer, "ai", parse_retry_tiers(STACK_RETRY_TIERS), delivery_limit=5
        )
    finally:
        await declarer.stop()
    async with running_stack(
        infra, rabbitmq_url=cluster_url, publish_timeout_s=3, retry_tiers=STACK_RETRY_TIERS
    ) as stack:
        assert rabbit_cluster.queue_leader(vhost, AI_JOBS) is second
        ports = rabbit_cluster.connection_ports(vhost)
        assert ports and set(ports) == {first.port}, ports  # gateway and worker on the first

        accepted: list[str] = []
        stop = asyncio.Event()
        submitters = [asyncio.create_task(submit_stream(stack, accepted, stop)) for _ in range(4)]
        try:
            async with asyncio.timeout(60):
                while len(accepted) < 100:
                    await asyncio.sleep(0.01)
            async with stopped(second):
                at_stop = len(accepted)
                async with asyncio.timeout(60):
                    while len(accepted) < at_stop + 100:
                        await asyncio.sleep(0.05)
                stop.set()
                unavailable = sum(await asyncio.gather(*submitters))
                new_leader = rabbit_cluster.queue_leader(vhost, AI_JOBS)
                outcome = await settle(
                    stack.store,
                    accepted,
                    scenario="RabbitMQ cluster: the node leading `ai.jobs` stopped under load, "
                    "gateway and worker connected to another node",
                    load=f"4 submitters; leader stopped after {at_stop} accepted; "
                    f"{len(accepted)} accepted, {unavailable} answered 503 while a new "
                    "leader was elected",
                )
                # The services' connections never moved: only the queue's leader did.
                still = rabbit_cluster.connection_ports(vhost)
        finally:
            stop.set()
            await asyncio.gather(*submitters, return_exceptions=True)
        assert new_leader is not second
        assert still and set(still) == {first.port}, still
        stack.assert_settled(outcome)
        assert all(p.process and p.process.poll() is None for p in stack.processes.values())


async def test_services_start_and_connect_while_the_first_node_named_is_down(
    rabbit_cluster: RabbitCluster, cluster_url: str
) -> None:
    async with stopped(rabbit_cluster.nodes[0]):
        broker = make_broker(cluster_url, service="cluster-test")
        try:
            await asyncio.wait_for(broker.connect(), 30)
            assert quorum_size_of(broker) == 3
            connection = await asyncio.wait_for(connect_robust_nodes(cluster_url), 30)
            await connection.close()
        finally:
            await broker.stop()


async def test_a_cluster_url_with_no_node_answering_fails_fast_with_the_reason() -> None:
    closed = ",".join(f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(3))
    broker = make_broker(closed, service="cluster-test")
    try:
        with pytest.raises(CONNECTION_LOST):
            await asyncio.wait_for(broker.connect(), 10)
        with pytest.raises(CONNECTION_LOST):
            await asyncio.wait_for(connect_robust_nodes(closed), 10)
    finally:
        await broker.stop()
