"""Session-wide fixtures: this run's RabbitMQ vhost and Redis prefix, and real clusters."""

from collections.abc import Iterator

import pytest

from offload_runtime.settings import RuntimeSettings
from tests.support.clusters import RabbitCluster, RedisCluster, remove_stale
from tests.support.infra import Infra, InfraUnavailable, start_infra, stop_infra

CLUSTER_STARTS: dict[str, float] = {}


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    # OFFLOAD_RABBITMQ_URL / OFFLOAD_REDIS_URL choose the servers (DESIGN §7);
    # every test then works in this run's own vhost and key prefix.
    base = RuntimeSettings()
    try:
        found, containers, ctl = start_infra(base.rabbitmq_url, base.redis_url)
    except InfraUnavailable as exc:
        pytest.exit(str(exc), returncode=3)
    yield found
    stop_infra(found, containers, ctl)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this run's own: 3 masters, 3 replicas, on free ports (~2 s)."""
    remove_stale()
    cluster = RedisCluster()
    try:
        cluster.start()
        CLUSTER_STARTS["Redis Cluster (3 masters + 3 replicas)"] = cluster.started_s
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """A RabbitMQ cluster of this run's own: 3 nodes, on free ports (~16 s)."""
    remove_stale()
    cluster = RabbitCluster()
    try:
        cluster.start()
        CLUSTER_STARTS["RabbitMQ cluster (3 nodes)"] = cluster.started_s
        yield cluster
    finally:
        cluster.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The suite must stay under 10 minutes on 2 cores: say what the clusters cost.
    if CLUSTER_STARTS:
        terminalreporter.section("cluster start-up")
        for name, seconds in CLUSTER_STARTS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-snapshots", action="store_true", help="rewrite contract schema snapshots"
    )
